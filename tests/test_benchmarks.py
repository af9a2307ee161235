"""The speed benchmark runs end to end on a tiny model, and its reference rows agree with the exact engine (its
timings are not checked: speed goals live in benchmarks/, never in timed tests); the GPU script's flags are
accepted by it."""
import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _read(out: Path) -> tuple:
    rows = {}
    for row in csv.DictReader(open(out / 'results.csv')):
        rows.setdefault(row['method'], row)
    return rows, json.loads((out / 'results.json').read_text())


@pytest.mark.usefixtures('single_thread')
def test_speed_benchmark_tiny_run(tmp_path):
    speed = load_script('benchmarks', 'speed')
    speed.main(['--model', 'smallresnet', '--size', '8', '8', '--patch', '4', '--fractions', '0.25', '--seeds', '1',
                '--repeats', '1', '--repeats-cheap', '1', '--chunks', '--no-plot', '--out', str(tmp_path)])
    rows, summary = _read(tmp_path)
    # h = 64 units, P = 4 patches: the engine takes the patch-major path; the h-pass path, the hybrid and the
    # naive per-unit Zennit loops (fast rules and Zennit's own) reproduce it (float32)
    assert summary['path'] == 'patches' and rows['exact']['passes'] == '6'
    for method in ('exact unit-major (h passes)', 'exact hybrid (pair)', 'naive Zennit loop',
                   'naive Zennit loop, Zennit rules'):
        assert float(rows[method]['rel_fro']) < 1e-3, method
    for method in ('select', 'sample', 'gaussian', 'orthogonal', 'sign', 'plain VJP floor', 'plain VJP vmap(vjp)'):
        assert method in rows
    assert rows['plain VJP floor']['k'] == '4'  # min(h, P) plain VJPs
    assert summary['exact_over_floor'] > 0 and summary['naive_zennit_rules_over_exact'] > 0
    assert summary['unit_major_over_exact'] > 0 and set(summary['targets']) == {
        'at_least_15x_faster_than_h_pass_path', 'at_most_3x_the_floor', 'under_2_minutes_per_pair'}


@pytest.mark.usefixtures('single_thread')
def test_gpu_script_flags_run_on_a_tiny_model(tmp_path):
    """benchmarks/gpu.sh's flags, on CPU with a tiny model: the h-pass path on a unit subset is extrapolated."""
    script = (ROOT / 'benchmarks' / 'gpu.sh').read_text()
    flags = shlex.split(re.search(r'^FLAGS="([^"]*)"', script, flags=re.M).group(1))
    assert '--model resnet50' in script and '--size 224 224' in script and '--device "$DEVICE"' in script
    speed = load_script('benchmarks', 'speed')
    args = speed.parse_args(['--model', 'resnet50', '--size', '224', '224', '--patch', '32', *flags])
    assert args.no_estimators and args.unit_subset == 256 and args.memory_budget == 1 << 34
    flags[flags.index('--unit-subset') + 1] = '16'  # fewer than the tiny model's 64 units: extrapolated
    speed.main(['--model', 'smallresnet', '--size', '8', '8', '--patch', '4', '--out', str(tmp_path), *flags])
    rows, summary = _read(tmp_path)
    assert 'extrapolated to 64' in rows['exact unit-major (h passes)']['note']
    assert 'extrapolated to 64' in rows['naive Zennit loop']['note']
    assert 'select' not in rows and summary['patches'] == 4


@pytest.mark.usefixtures('single_thread')
def test_retrieval_benchmark_tiny_run(tmp_path):
    """Both retrieval strategies answer with the same ranking and explanations, and the top-k one computes factors
    for the query and its matches only (the saving itself is measured in the benchmark, not here)."""
    retrieval = load_script('benchmarks', 'retrieval')
    retrieval.main(['--gallery', '5', '--queries', '1', '--k', '1', '2', '--size', '16', '16', '--patch', '8',
                    '--repeats', '1', '--out', str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / 'retrieval.csv')))
    assert [(r['strategy'], r['k']) for r in rows] == [('dense', '5'), ('topk', '1'), ('topk', '2')]
    assert [int(r['factor_computations']) for r in rows] == [6, 2, 3]
    assert all(float(r['max_rel_diff']) < 1e-5 for r in rows[1:])
    summary = json.loads((tmp_path / 'retrieval.json').read_text())
    assert summary['settings']['gallery'] == 5 and len(summary['rows']) == 3


@pytest.mark.usefixtures('single_thread')
def test_correspondence_benchmark_tiny_run(tmp_path):
    """The correspondence benchmark end to end on the toy demo encoder: every method and control gets a row per pair
    and patch size, the oracle points perfectly, the coarse-only and subset methods run where asked, the sanity
    check and the randomization curve are written, and a second run answers from the cache."""
    pytest.importorskip('skimage', reason="the [demo] extra is not installed: pip install 'zennit-bilrp[demo]'")
    correspondence = load_script('benchmarks', 'correspondence')
    argv = ['--model', 'toy', '--pairs', '2', '--size', '32', '32', '--patch', '16', '8', '--methods', 'bilrp_default',
            'bilrp_epsilon_plus', 'saliency_outer', 'hessian_product', 'integrated_jac', '--ij-steps', '1',
            '--subset', 'integrated_jac=1', '--coarse-only', 'bilrp_epsilon_plus', '--points', '4', '--k', '4',
            '--randomization', 'saliency_outer', '--randomization-steps', '1', '--out', str(tmp_path)]
    assert correspondence.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / 'per_pair.csv')))
    count = {}
    for row in rows:
        count[row['method'], row['patch']] = count.get((row['method'], row['patch']), 0) + 1
    for method in ('bilrp_default', 'saliency_outer', 'hessian_product', 'oracle', 'random'):
        assert count[method, '16'] == count[method, '8'] == 2, method
    assert count['integrated_jac', '8'] == 1 and count['bilrp_epsilon_plus', '16'] == 2
    assert ('bilrp_epsilon_plus', '8') not in count
    assert all(float(r['pointing']) == 1.0 for r in rows if r['method'] == 'oracle' and r['patch'] == '8')
    assert all(0 < float(r['singular_share']) <= 1 for r in rows if r['method'].startswith('bilrp'))
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['settings']['subsets'] == {'integrated_jac': [0]}
    assert set(summary['sanity']['8']) == {'insertion', 'deletion'}
    assert summary['sanity']['8']['insertion']['pairs'] == 2
    assert [r['randomized'] for r in summary['randomization']] == [0, 1]
    for name in ('table.md', 'summary.csv', 'correspondence.png', 'correspondence_pairs.png', 'randomization.csv'):
        assert (tmp_path / name).is_file(), name
    # a second run reads every method's relevance from the cache
    cached = sorted((tmp_path / 'cache').rglob('*.npz'))
    stamps = [path.stat().st_mtime_ns for path in cached]
    assert correspondence.main(argv + ['--no-sanity', '--no-plot']) == 0
    assert [path.stat().st_mtime_ns for path in cached] == stamps and len(cached) == 2 * 4 + 1
