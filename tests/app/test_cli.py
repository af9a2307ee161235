"""The zennit-bilrp command: explain with torchvision/factory models offline, layer truncation, argument checks
before any computation, clear errors, the study commands."""
from pathlib import Path

import numpy as np
import pytest
import torch

from zennit_bilrp import BiLRP
from zennit_bilrp.app.cli import main
from zennit_bilrp.app.explain_cli import make_composite
from zennit_bilrp.lrp.layers import LayerEmbedding
from zennit_bilrp.models.loading import load_model
from zennit_bilrp.models.small_resnet import SmallResNet


@pytest.fixture(scope='module')
def images(image_files):
    paths = image_files([(40, 60), (50, 50)], seed=0)
    bad = Path(paths[0]).parent / 'broken.png'
    bad.write_text('this is not an image')
    return paths, str(bad)


FACTORIES = """
import torch
from torch import nn

from zennit_bilrp.models.small_resnet import SmallResNet


def small():
    torch.manual_seed(0)
    return SmallResNet(widths=(4, 8), batch_norm=False)


def not_a_model():
    return 3


def failing():
    raise RuntimeError('no model today')


class SizeAsserting(nn.Module):
    \"\"\"Refuses inputs other than 32 x 32 with an assertion, as torchvision's vision transformers do.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)

    def forward(self, x):
        assert x.shape[-2:] == (32, 32), f'Wrong image size! Expected 32 x 32 but got {tuple(x.shape[-2:])}!'
        return self.conv(x).amax((2, 3))


def size_asserting():
    return SizeAsserting()
"""


@pytest.fixture
def factories(module_writer):
    """A module ``cli_factories`` of model factories, importable for the test."""
    module_writer('cli_factories', FACTORIES)
    import cli_factories

    return cli_factories


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


def test_explain_factory_model_with_state_dict(images, factories, tmp_path):
    (a, b), _ = images
    weights = tmp_path / 'small_state.pt'
    reference = factories.small()
    torch.save(reference.state_dict(), weights)
    model, kind = load_model('cli_factories:small', str(weights))
    assert kind == 'custom' and not model.training
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    out = tmp_path / 'figure.png'
    assert main(['explain', a, b, '--model', 'cli_factories:small', '--weights', str(weights), '--composite',
                 'epsilon_plus', '--size', '16', '24', '--patch', '4', '--top-k', '3', '--out', str(out)]) == 0
    assert out.read_bytes()[:4] == b'\x89PNG'


def test_pickled_models_are_never_unpickled(images, tmp_path, capsys):
    """A file holding anything but tensors is refused, and the code a pickle would run never runs."""
    (a, b), _ = images
    marker = tmp_path / 'unpickled.txt'
    payload = tmp_path / 'payload.pt'
    torch.save(_Payload(marker), payload)
    err = _error(capsys, ['explain', a, b, '--model', 'resnet18', '--weights', str(payload)])
    assert 'holds more than tensors' in err and 'state_dict' in err
    assert not marker.exists()
    full = tmp_path / 'full_model.pt'
    torch.save(SmallResNet(widths=(4,)), full)
    assert 'whole pickled models are not loaded' in _error(capsys, ['explain', a, b, '--model', str(full)])
    assert 'holds more than tensors' in _error(capsys, ['explain', a, b, '--model', 'cli_factories:small',
                                                        '--weights', str(full)])


class _Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize('spec, message', [
    ('cli_factories:missing', "has no attribute 'missing'"),
    ('cli_factories:not_a_model', 'returned a int, not a torch.nn.Module'),
    ('cli_factories:failing', 'calling cli_factories:failing() failed: RuntimeError: no model today'),
    ('no_such_module_xyz:make', "cannot import 'no_such_module_xyz'"),
    ('cli_factories:small:extra', 'is not of the form package.module:callable'),
])
def test_factory_errors(images, factories, capsys, spec, message):
    (a, b), _ = images
    assert message in _error(capsys, ['explain', a, b, '--model', spec])


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
    assert '--weights ' + str(state) in _error(capsys, ['explain', a, b, '--model', str(state)])


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


def test_top_k_above_the_number_of_pairs_is_clamped_before_computing(images, tmp_path, capsys, monkeypatch):
    """32 x 32 images with 16-pixel patches have 4 x 4 = 16 patch pairs: the default --top-k 20 draws all 16."""
    from zennit_bilrp.app import viz

    (a, b), _ = images
    drawn = []
    original = viz.plot_bilrp
    monkeypatch.setattr(viz, 'plot_bilrp', lambda *args, **kwargs: drawn.append(kwargs['k']) or original(*args,
                                                                                                        **kwargs))
    out = tmp_path / 'clamped.png'
    assert main(['explain', a, b, '--size', '32', '32', '--patch', '16', '--out', str(out)]) == 0
    err = capsys.readouterr().err
    assert 'warning: --top-k 20 is more than the 16 patch pairs' in err
    assert drawn == [16] and out.is_file()


@pytest.mark.parametrize('extra, message', [
    (['--dpi', '0'], '--dpi must be positive'),
    (['--chunk-size', '0'], '--chunk-size must be positive'),
    (['--threshold', '1.5'], '--threshold must be in (0, 1]'),
    (['--top-k', '-3'], '--top-k must be positive'),
    (['--size', '32', '48', '--patch', '7'], 'does not divide the image size'),
    pytest.param(['--device', 'cuda'], 'CUDA is not available',
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')),
])
def test_arguments_are_checked_before_the_model_is_loaded(images, capsys, extra, message):
    (a, b), _ = images
    err = _error(capsys, ['explain', a, b, *extra])
    assert message in err and 'loading model' not in err


def test_demo_checks_its_arguments_first(capsys):
    assert '--top-k must be positive' in _error(capsys, ['demo', '--top-k', '0'])
    assert 'must end in one of' in _error(capsys, ['demo', '--out', 'demo.gif'])


def test_version(capsys):
    from zennit_bilrp import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(['--version'])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f'zennit-bilrp {__version__}'


def test_every_argument_has_help():
    import argparse

    from zennit_bilrp.app.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f'{path} {name}')
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield f'{path} {action.dest}', action.help

    helps = dict(walk(build_parser(), 'zennit-bilrp'))
    assert {'zennit-bilrp explain image_a', 'zennit-bilrp explain image_b', 'zennit-bilrp demo top_k',
            'zennit-bilrp study summarize n_boot'} <= set(helps)
    assert [name for name, text in helps.items() if not text] == []


def test_model_input_size_is_checked_before_computing(images, capsys):
    (a, b), _ = images
    err = _error(capsys, ['explain', a, b, '--model', 'vit_b_16', '--size', '32', '32'])
    assert "model 'vit_b_16' takes 224 x 224 images only" in err and '--size 224 224' in err


def test_model_assertion_on_the_input_becomes_a_clear_error(images, factories, capsys):
    (a, b), _ = images
    err = _error(capsys, ['explain', a, b, '--model', 'cli_factories:size_asserting', '--size', '16', '16',
                          '--patch', '8'])
    assert "model 'cli_factories:size_asserting' cannot take 16 x 16 images: AssertionError: Wrong image size" in err
    assert 'Traceback' not in err


def test_bilrp_gamma_needs_vgg_features(images, capsys):
    (a, b), _ = images
    err = _error(capsys, ['explain', a, b, '--composite', 'bilrp_gamma', '--size', '16', '16'])
    assert "needs a model with a VGG 'features' block" in err and 'depth_gamma' in err


def _write_study_rows(folder, rank, rows):
    columns = ['pair', 'index', 'model', 'marginal_context_a', 'context_abs']
    with open(folder / f'pairs_rank{rank}.csv', 'w') as handle:
        handle.write(','.join(columns) + '\n')
        for row in rows:
            handle.write(','.join(str(value) for value in row) + '\n')


@pytest.fixture
def study_dir(tmp_path):
    rng = np.random.default_rng(0)
    for rank in (0, 1):
        rows = []
        for pair in range(rank * 6, rank * 6 + 6):
            base = float(rng.uniform(0.2, 0.4))
            rows.append((f'pair{pair}', pair, 'base', base, base / 2))
            rows.append((f'pair{pair}', pair, 'aligned', base + 0.1, base / 2 + 0.05))
        _write_study_rows(tmp_path, rank, rows)
    return tmp_path


def test_study_merge_and_summarize(study_dir, capsys):
    import csv

    from zennit_bilrp.analysis.study import read_results, summarize

    assert main(['study', 'merge', str(study_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(study_dir / 'pairs.csv')
    merged = read_results(str(study_dir / 'pairs.csv'))
    assert len(merged) == 24 and [row['index'] for row in merged[::2]] == list(range(12))
    assert main(['study', 'summarize', str(study_dir), '--baseline', 'base', '--metrics', 'marginal_context_a',
                 'context_abs', '--n-boot', '50']) == 0
    out = capsys.readouterr().out
    with open(study_dir / 'summary.csv', newline='') as handle:
        table = list(csv.DictReader(handle))
    expected = summarize(read_results(str(study_dir)), ['marginal_context_a', 'context_abs'], 'base', 50)
    assert len(table) == len(expected) == 6
    for row, record in zip(table, expected):
        assert (row['kind'], row['metric'], row['model']) == (record['kind'], record['metric'], record['model'])
        assert float(row['mean']) == pytest.approx(record['mean'], rel=1e-12)
    difference = next(r for r in expected if r['kind'] == 'paired_difference' and r['metric'] == 'marginal_context_a')
    assert difference['mean'] == pytest.approx(0.1, abs=1e-9)
    assert 'paired_difference' in out and str(study_dir / 'summary.csv') in out


@pytest.mark.parametrize('argv, message', [
    (['study', 'merge', 'MISSING'], 'does not exist'),
    (['study', 'summarize', 'STUDY', '--baseline', 'nobody'], "--baseline 'nobody' is not among the models"),
    (['study', 'summarize', 'STUDY', '--metrics', 'no_such_metric'], 'none of the metrics no_such_metric'),
    (['study', 'summarize', 'STUDY', '--n-boot', '0'], '--n-boot must be positive'),
    (['study', 'merge', 'EMPTY'], 'no result rows'),
])
def test_study_errors(study_dir, tmp_path_factory, capsys, argv, message):
    empty = tmp_path_factory.mktemp('empty_study')
    paths = {'MISSING': str(study_dir / 'missing'), 'STUDY': str(study_dir), 'EMPTY': str(empty)}
    assert message in _error(capsys, [paths.get(arg, arg) for arg in argv])
