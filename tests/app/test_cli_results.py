"""The explain command's result file, strictness, dtype, cost estimate and torchvision preprocessing."""
import pytest
import torch
from PIL import Image

from zennit_bilrp.app.cli import main
from zennit_bilrp.core.results import BiLRPResult, pairwise_relevance
from zennit_bilrp.models.loading import torchvision_preprocessing
from zennit_bilrp.models.preprocessing import load_image, normalize

FACTORIES = """
import torch
from torch import nn

from zennit_bilrp.models.small_resnet import SmallResNet


def small():
    torch.manual_seed(0)
    return SmallResNet(widths=(4, 8), batch_norm=False)


def with_group_norm():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
"""


@pytest.fixture(scope='module')
def images(image_files):
    return image_files([(40, 60), (64, 48)], seed=3, prefix='photo')


@pytest.fixture
def factories(module_writer):
    module_writer('cli_result_factories', FACTORIES)


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_save_relevance_dtype_and_cost_estimate(images, factories, tmp_path, capsys, dtype):
    a, b = images
    out, saved = tmp_path / 'pair.png', tmp_path / 'pair.npz'
    assert main(['explain', a, b, '--model', 'cli_result_factories:small', '--composite', 'epsilon_plus', '--size',
                 '16', '24', '--patch', '4', '--top-k', '3', '--out', str(out), '--save-relevance', str(saved),
                 '--dtype', dtype]) == 0
    captured = capsys.readouterr()
    assert 'cost estimate:' in captured.err and 'backward passes' in captured.err
    assert f'wrote {saved}' in captured.out and out.is_file()
    result = BiLRPResult.load(saved)
    assert result.relevance.dtype == getattr(torch, dtype)
    assert result.relevance.shape == (1, 24, 24) and result.grid_a.grid == (4, 6)
    assert result.marginal_a.shape == (1, 3, 16, 24)
    meta = result.metadata
    assert meta['model_name'] == 'cli_result_factories:small' and meta['composite'] == 'EpsilonPlus'
    assert meta['images'] == [a, b] and meta['dtype'] == dtype and meta['patch'] == 4
    # the saved factors reproduce the saved relevance (cosine, the command's default similarity)
    again = pairwise_relevance(result.factors_a, result.factors_b, 'cosine')
    tol = 1e-12 if dtype == 'float64' else 1e-5
    torch.testing.assert_close(again, result.relevance, rtol=tol, atol=tol * float(result.relevance.abs().max()))


def test_strict_and_no_strict(images, factories, tmp_path, capsys):
    a, b = images
    argv = ['explain', a, b, '--model', 'cli_result_factories:with_group_norm', '--composite', 'epsilon_plus',
            '--size', '16', '16', '--patch', '8', '--top-k', '2', '--out', str(tmp_path / 'g.png')]
    assert main(argv) == 2
    assert 'GroupNorm' in capsys.readouterr().err
    assert main(argv + ['--no-strict']) == 0
    assert 'strict=False' in capsys.readouterr().err


def test_bad_result_file_name_is_refused_before_loading(images, capsys):
    a, b = images
    assert main(['explain', a, b, '--save-relevance', 'out.pickle']) == 2
    err = capsys.readouterr().err
    assert "--save-relevance 'out.pickle': the file name must end in .npz" in err


def test_torchvision_preprocessing_matches_the_weights_transforms(images):
    from torchvision.models import get_model_weights

    transform = torchvision_preprocessing('resnet18')
    reference = get_model_weights('resnet18').DEFAULT.transforms()
    assert list(transform.crop_size) == [224] and list(transform.mean) == list(reference.mean)
    display = load_image(images[1], transform=transform)
    assert display.shape == (1, 3, 224, 224) and 0 <= float(display.min()) and float(display.max()) <= 1
    with Image.open(images[1]) as image:
        expected = reference(image.convert('RGB'))
    normalized, (low, high) = normalize(display, transform)
    torch.testing.assert_close(normalized[0], expected, rtol=1e-5, atol=1e-5)
    mean, std = torch.tensor(reference.mean), torch.tensor(reference.std)
    torch.testing.assert_close(low.reshape(3), -mean / std)
    torch.testing.assert_close(high.reshape(3), (1 - mean) / std)
    with pytest.raises(Exception, match='no weights'):
        torchvision_preprocessing('resnet18', 'NOT_A_WEIGHT')


def test_torchvision_model_default_size_is_the_weights_crop(images, tmp_path, capsys, monkeypatch):
    """Without --size a torchvision model sees its weights' resize + center crop (224 x 224)."""
    from zennit_bilrp.app import explain_cli

    seen = []
    original = explain_cli._probe
    monkeypatch.setattr(explain_cli, '_probe', lambda model, x, name, size: seen.append(tuple(x.shape)) or
                        original(model, x, name, size))
    a, b = images
    assert main(['explain', a, b, '--model', 'resnet18', '--layer', 'layer1', '--patch', '56', '--top-k', '2',
                 '--similarity', 'dot', '--out', str(tmp_path / 'r.png'), '--dtype', 'float32']) == 0
    assert seen == [(1, 3, 224, 224)]
    assert '224 x 224 pixels' in capsys.readouterr().err


def test_cost_estimate_without_an_engine_plan(images, factories, tmp_path, capsys, monkeypatch):
    """Without BiLRP.plan the estimate is units x passes of the unit-major path (SmallResNet(4, 8): h = 8)."""
    from zennit_bilrp import BiLRP

    if hasattr(BiLRP, 'plan'):
        monkeypatch.delattr(BiLRP, 'plan')
    a, b = images
    assert main(['explain', a, b, '--model', 'cli_result_factories:small', '--composite', 'epsilon_plus', '--size',
                 '16', '16', '--patch', '8', '--top-k', '2', '--out', str(tmp_path / 'p.png')]) == 0
    assert 'cost estimate: 8 embedding units x 1 LRP backward pass = 8 passes' in capsys.readouterr().err
