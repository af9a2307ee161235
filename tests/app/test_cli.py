"""The zennit-bilrp command: explain with torchvision/custom models offline, layer truncation, clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from zennit_bilrp import BiLRP
from zennit_bilrp.app.cli import load_model, main, make_composite
from zennit_bilrp.lrp.layers import LayerEmbedding
from zennit_bilrp.models.small_resnet import SmallResNet


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 60), (50, 50)]):
        path = folder / f'image_{i}.png'
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    bad = folder / 'broken.png'
    bad.write_text('this is not an image')
    return paths, str(bad)


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'resnet18_local.pth'
    torch.save(resnet18().state_dict(), path)
    return str(path)


def _error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_explain_torchvision_model_with_local_weights_file(images, resnet18_file, tmp_path, capsys):
    (a, b), _ = images
    out = tmp_path / 'figure.svg'
    argv = ['explain', a, b, '--model', 'resnet18', '--weights', resnet18_file, '--layer', 'layer1',
            '--size', '32', '32', '--patch', '8', '--top-k', '5', '--similarity', 'dot', '--out', str(out)]
    assert main(argv) == 0
    assert out.read_bytes()[:5] == b'<?xml'
    captured = capsys.readouterr()
    assert 'wrote' in captured.out and 'embedding (64, 8, 8)' in captured.err


def test_explain_full_model_checkpoint_and_composite(images, tmp_path):
    (a, b), _ = images
    torch.manual_seed(0)
    model_path = tmp_path / 'full_model.pt'
    torch.save(SmallResNet(widths=(4, 8), batch_norm=False), model_path)
    out = tmp_path / 'figure.png'
    assert main(['explain', a, b, '--model', str(model_path), '--composite', 'epsilon_plus', '--size', '16', '24',
                 '--patch', '4', '--top-k', '3', '--out', str(out)]) == 0
    assert out.read_bytes()[:4] == b'\x89PNG'


def test_offline_pretrained_weights_error_says_how_to_pass_a_file(images, capsys):
    (a, b), _ = images
    err = _error(capsys, ['explain', a, b, '--model', 'resnet18', '--weights', 'DEFAULT'])
    assert 'not available offline' in err and '--weights /path/to/resnet18-' in err
    assert 'resnet18-f37072fd.pth' in err


@pytest.mark.parametrize('extra, message', [
    (['--model', 'resnet99'], "unknown model 'resnet99'"),
    (['--model', 'resnet18', '--layer', 'layer9'], "unknown layer 'layer9'"),
    (['--patch', '7', '--size', '32', '48'], 'does not divide the image size'),
    (['--patch', '0'], '--patch must be a positive'),
    (['--composite', 'guided_backprop'], 'not an LRP composite'),
    (['--composite', 'no_such_composite'], 'unknown composite'),
    (['--out', 'figure.jpg'], 'must end in one of'),
    (['--top-k', '0'], '--top-k must be positive'),
])
def test_clear_errors(images, capsys, extra, message):
    (a, b), _ = images
    assert message in _error(capsys, ['explain', a, b, *extra])


def test_unreadable_images(images, capsys, tmp_path):
    (a, _), bad = images
    assert "cannot read image '" in _error(capsys, ['explain', a, bad])
    assert 'no such file' in _error(capsys, ['explain', str(tmp_path / 'missing.png'), a])


def test_weights_that_do_not_fit(images, tmp_path, capsys):
    (a, b), _ = images
    path = tmp_path / 'wrong.pth'
    torch.save({'conv1.weight': torch.zeros(1)}, path)
    assert 'do not fit' in _error(capsys, ['explain', a, b, '--model', 'resnet18', '--weights', str(path)])
    state = tmp_path / 'state.pt'
    torch.save(SmallResNet(widths=(4,)).state_dict(), state)
    assert 'state dict, not a full model' in _error(capsys, ['explain', a, b, '--model', str(state)])


def test_layer_embedding_is_one_truncated_forward(resnet18_file):
    model, kind = load_model('resnet18', resnet18_file)
    assert kind == 'torchvision' and not model.training
    calls = []
    handle = model.fc.register_forward_hook(lambda *args: calls.append('fc'))
    x = torch.rand(2, 3, 32, 32)
    captured = {}
    ref = model.layer2.register_forward_hook(lambda m, i, o: captured.setdefault('out', o))
    with torch.no_grad():
        model(x)
    ref.remove()
    calls.clear()
    wrapped = LayerEmbedding(model, 'layer2')
    with torch.no_grad():
        out = wrapped(x)
    assert torch.equal(out, captured['out'])
    assert calls == []  # nothing after the layer ran
    assert len(model.layer2._forward_hooks) == 0  # the stop hook is gone
    handle.remove()
    with pytest.raises(ValueError, match='unknown layer'):
        LayerEmbedding(model, 'layer2.9')


def test_layer_embedding_bilrp_conserves_on_resnet(resnet18_file):
    """Truncated torchvision ResNet (canonized through the wrapper): sum R equals the dot similarity."""
    model, _ = load_model('resnet18', resnet18_file)
    model = LayerEmbedding(model.double(), 'layer1')
    torch.manual_seed(1)
    x_a, x_b = torch.rand(1, 3, 16, 16, dtype=torch.float64), torch.rand(1, 3, 16, 16, dtype=torch.float64)
    composite = make_composite('epsilon_plus', model, 'torchvision')
    with BiLRP(model, composite=composite, similarity='dot', head='avg') as bilrp:
        result = bilrp(x_a, x_b, pooling=4, marginals=False)
    # exact up to the 1e-6 stabilizers of the rules
    assert float(result.delta.abs()) < 1e-4 * float(result.similarity.abs())
    assert len(model.model.layer1._forward_hooks) == 0
