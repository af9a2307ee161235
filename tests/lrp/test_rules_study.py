"""benchmarks/rules_study.py end to end on a tiny setting (a randomly initialized Lite0, one 32 x 64 pair): it writes
its table, CSV and JSON, resumes from its cache, and names the default candidate."""
import json

import pytest

from helpers.scripts import load_script


@pytest.mark.usefixtures('single_thread')
def test_rules_study_tiny_run(tmp_path):
    from zennit_bilrp.lrp.choose import MOBILE_EPSILON, MOBILE_TOP

    study = load_script('benchmarks', 'rules_study')
    default = f'top{MOBILE_TOP:g}_eps{MOBILE_EPSILON:g}'
    argv = ['--model', 'random', '--size', '32', '64', '--pairs', '1', '--candidates', 'zplus', default,
            '--baselines', 'hessian_product', '--subset-pairs', '1', '--grid-pairs', '1', '--no-plot',
            '--out', str(tmp_path)]
    assert study.main(argv) == 0
    summary = json.loads((tmp_path / 'summary.json').read_text())
    rows = {row['method']: row for row in summary['table']}
    assert set(rows) == {'bilrp_zplus', f'bilrp_{default}', 'hessian_product', 'oracle', 'random'}
    for patch in (32, 16):  # the oracle ranks the true matches first: no method points better
        assert rows['oracle'][f'pointing_{patch}'] == max(r[f'pointing_{patch}'] for r in rows.values()) > 0
    for name in ('bilrp_zplus', f'bilrp_{default}'):
        assert 'pointing_16' in rows[name] and 0.0 <= rows[name]['singular_share_32'] <= 1.0
        assert 'grid2' in rows[name] and rows[name]['seconds_patch'] == 16
    # z+ everywhere conserves; the default is found among the candidates by its settings
    assert rows['bilrp_zplus']['conservation'] == pytest.approx(1.0, abs=1e-3)
    assert summary['targets']['default'] == default
    assert (tmp_path / 'table.md').read_text().count('**the default**') == 1
    assert (tmp_path / 'per_pair.csv').is_file() and (tmp_path / 'summary.csv').is_file()
    # a second run reads everything from the cache
    cached = sorted(p.name for p in (tmp_path / 'cache').rglob('*.npz'))
    assert study.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / 'cache').rglob('*.npz')) == cached
    assert set(study.CANDIDATES) >= {'zplus', 'epsilon_gamma_box', 'gamma_schedule', 'gamma_schedule_bias'}
