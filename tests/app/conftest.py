"""Fixtures of the figure and command-line tests: a real engine result, image files and importable modules of
model factories."""
import numpy as np
import pytest
import torch
from PIL import Image

from zennit_bilrp import BiLRP
from zennit_bilrp.models.small_resnet import SmallResNet


@pytest.fixture(scope='module')
def result():
    """A real engine result on a tiny random CNN: 2 pairs of 16 x 24 images, 4-pixel patches."""
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), batch_norm=False).eval()
    x_a, x_b = torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24)
    with BiLRP(model, similarity='dot') as bilrp:
        res = bilrp(x_a, x_b, pooling=4)
    return res, x_a, x_b


@pytest.fixture(scope='module')
def image_files(tmp_path_factory):
    """A writer of random RGB PNG files: ``write(sizes, seed, prefix)`` returns the paths of one file per ``(h, w)``."""
    def write(sizes, seed, prefix='image'):
        folder = tmp_path_factory.mktemp(prefix)
        rng = np.random.default_rng(seed)
        paths = []
        for i, (h, w) in enumerate(sizes):
            path = folder / f'{prefix}_{i}.png'
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        return paths

    return write


@pytest.fixture
def module_writer(tmp_path_factory, monkeypatch):
    """A writer of importable modules: ``write(name, source)`` saves ``name.py`` on a path the test imports from."""
    def write(name, source):
        folder = tmp_path_factory.getbasetemp() / f'{name}_module'
        folder.mkdir(exist_ok=True)
        (folder / f'{name}.py').write_text(source)
        monkeypatch.syspath_prepend(str(folder))

    return write
