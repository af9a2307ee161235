"""Fixtures of the command-line tests: image files and importable modules of model factories."""
import numpy as np
import pytest
from PIL import Image


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
