"""Model loading and image preprocessing as library calls (models/loading.py, models/preprocessing.py): state dicts
only (never unpickled code), clear errors naming the file or the model, models untouched by weights that do not
fit, checksums equal to hashlib's."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zennit_bilrp.models.loading import (
    ModelLoadError,
    build_factory,
    load_model,
    load_torchvision_model,
    load_weights,
    read_state_dict,
    sha256_file,
    torchvision_preprocessing,
)
from zennit_bilrp.models.preprocessing import image_size, load_image, normalize
from zennit_bilrp.models.small_resnet import SmallResNet


def small(seed=0):
    torch.manual_seed(seed)
    return SmallResNet(widths=(4,), batch_norm=False)


class _Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_sha256_file_is_hashlib_over_several_blocks(tmp_path):
    path = tmp_path / 'blob.bin'
    data = np.random.default_rng(0).integers(0, 256, (1 << 20) * 2 + 12345, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / 'empty.bin'
    empty.write_bytes(b'')
    assert sha256_file(empty) == hashlib.sha256(b'').hexdigest()


@pytest.mark.parametrize('key', [None, 'state_dict', 'model_state_dict', 'model'])
def test_read_state_dict_plain_and_nested(tmp_path, key):
    state = small().state_dict()
    path = tmp_path / 'weights.pt'
    torch.save(state if key is None else {key: state, 'epoch': 3}, path)
    loaded = read_state_dict(path)
    assert set(loaded) == set(state)
    for name, value in state.items():
        assert torch.equal(loaded[name], value)


def test_read_state_dict_refuses_pickles_without_running_them(tmp_path):
    marker = tmp_path / 'unpickled.txt'
    payload = tmp_path / 'payload.pt'
    torch.save(_Payload(marker), payload)
    with pytest.raises(ModelLoadError, match='holds more than tensors'):
        read_state_dict(payload)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match='does not exist'):
        read_state_dict(tmp_path / 'missing.pt')
    listing = tmp_path / 'list.pt'
    torch.save([torch.zeros(2)], listing)
    with pytest.raises(ModelLoadError, match='holds a list, not a state dict'):
        read_state_dict(listing)
    assert issubclass(ModelLoadError, ValueError)


def test_weights_that_do_not_fit_leave_the_model_as_it_was(tmp_path):
    model = small(0)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    other = small(1).state_dict()
    first = next(iter(other))
    other['extra.weight'] = torch.zeros(1)  # one key too many: torch copies the rest, then raises
    path = tmp_path / 'almost.pt'
    torch.save(other, path)
    with pytest.raises(ModelLoadError, match="do not fit 'small'"):
        load_weights(model, path, 'small')
    assert not torch.equal(other[first], before[first])  # the file really held other values
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    del other['extra.weight']
    torch.save(other, path)
    assert load_weights(model, path, 'small') is model
    assert torch.equal(model.state_dict()[first], other[first])


def test_factory_and_name_errors(tmp_path):
    with pytest.raises(ModelLoadError, match='is not of the form package.module:callable'):
        build_factory('a:b:c')
    with pytest.raises(ModelLoadError, match="cannot import 'no_such_module_xyz'"):
        build_factory('no_such_module_xyz:make')
    with pytest.raises(ModelLoadError, match="has no attribute 'nope'"):
        build_factory('zennit_bilrp.models.small_resnet:nope')
    with pytest.raises(ModelLoadError, match='returned a list, not a torch.nn.Module'):
        build_factory('zennit_bilrp.models.loading:torchvision_names')
    with pytest.raises(ModelLoadError, match='names a tuple, not a callable'):
        build_factory('zennit_bilrp.models.demo:DEMO_SIZE')
    assert isinstance(build_factory('zennit_bilrp.models.small_resnet:mlp'), torch.nn.Sequential)
    with pytest.raises(ModelLoadError, match="unknown model 'resnet99'.*resnet18"):
        load_model('resnet99')
    state = tmp_path / 'state.pt'
    torch.save(small().state_dict(), state)
    with pytest.raises(ModelLoadError, match=f'whole pickled models are not loaded.*--weights {state}'):
        load_model(str(state))


def test_load_model_kinds(tmp_path):
    model, kind = load_model('demo')
    assert kind == 'demo' and not model.training
    from zennit_bilrp.models.small_resnet import mlp

    weights = tmp_path / 'mlp.pt'
    torch.manual_seed(2)
    reference = mlp()
    torch.save(reference.state_dict(), weights)
    model, kind = load_model('zennit_bilrp.models.small_resnet:mlp', str(weights))
    assert kind == 'custom' and not model.training
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    model, kind = load_model('resnet18')
    assert kind == 'torchvision' and not model.training


def test_pretrained_torchvision_weights_are_never_downloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError, match=r'not available offline.*resnet18-f37072fd\.pth'):
        load_torchvision_model('resnet18', 'DEFAULT')
    with pytest.raises(ModelLoadError, match='no weights'):
        torchvision_preprocessing('resnet18', 'NOT_A_WEIGHT')


def test_image_files_to_inputs(tmp_path):
    path = tmp_path / 'photo.png'
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    assert image_size(path) == (20, 30)
    x = load_image(path)
    assert x.shape == (1, 3, 20, 30) and x.dtype == torch.float32
    torch.testing.assert_close(x[0].permute(1, 2, 0), torch.from_numpy(pixels).float() / 255, rtol=0, atol=0)
    assert load_image(path, size=(8, 12)).shape == (1, 3, 8, 12)
    normalized, (low, high) = normalize(x, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    torch.testing.assert_close(normalized, (x - 0.5) / 0.25)
    torch.testing.assert_close(low.reshape(3), torch.full((3,), -2.0))
    torch.testing.assert_close(high.reshape(3), torch.full((3,), 2.0))
    with pytest.raises(FileNotFoundError, match='no such file'):
        load_image(tmp_path / 'missing.png')
    broken = tmp_path / 'broken.png'
    broken.write_text('not an image')
    with pytest.raises(ValueError, match=f"cannot read image {str(broken)!r}"):
        image_size(broken)
    assert os.path.exists(broken)
