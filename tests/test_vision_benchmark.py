"""benchmarks/vision_speed.py end to end on tiny vision transformers (image-image and image-text, both rule
families): the plan, the timed runs, the floor and the h-pass rows are written, and the h-pass factor rows agree with
the exact result (timings are not checked: speed goals live in benchmarks/); the GPU script's vision flags are
accepted by it."""
import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from helpers.scripts import load_script

pytest.importorskip('transformers', minversion='5',
                    reason="the [vision] extra (transformers 5) is not installed: pip install 'zennit-bilrp[vision]'")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures('single_thread')
def test_vision_benchmark_tiny_run(tmp_path):
    bench = load_script('benchmarks', 'vision_speed')
    runs = bench.main(['--setting', 'tiny_vit', 'tiny_clip', '--tokens', '4', '--repeats', '2', '--unit-subset', '8',
                       '--out', str(tmp_path)])
    assert [(r['setting'], r['family']) for r in runs] == [
        ('tiny_vit', 'conservative'), ('tiny_vit', 'attnlrp'), ('tiny_clip', 'conservative'), ('tiny_clip', 'attnlrp')]
    for run in runs:
        # P < h on every tower: the cost model takes the patch-major path (P second-order passes + 2)
        assert [(p['path'], p['passes']) for p in run['plans']] == (
            [('patches', 6)] if run['setting'] == 'tiny_vit' else [('patches', 6), ('patches', 6)])
        assert len(run['exact_seconds']) == 2 and len(run['floor']['all_seconds']) == 2
        assert [t['vjps'] for t in run['floor']['towers']] == ([4] if run['setting'] == 'tiny_vit' else [4, 4])
        assert run['exact_over_floor'] > 0 and run['unit_major_over_exact'] > 0
        # the h-pass path on 8 units, extrapolated to h = 32, reproduces the exact factor rows
        assert run['unit_major']['factor_rows_rel_error'] < 1e-4
        assert all(t['units_timed'] == 8 and t['h'] == 32 for t in run['unit_major']['towers'])
    assert runs[2]['relevance_shape'] == [4, 4]  # 2 x 2 patches by 4 tokens
    rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
    assert len(rows) == 4 and rows[0]['passes'].startswith('image pair: patch-major 6 (h = 32, P = 4)')
    table = (tmp_path / 'table.md').read_text()
    assert table.count('\n| tiny_') == 4 and 'random weights' in table
    assert json.loads((tmp_path / 'tiny_clip_attnlrp.json').read_text())['kind'] == 'image-text'
    assert len(bench.main(['--table', '--out', str(tmp_path)])) == 4  # rebuilt from the JSON files alone


@pytest.mark.usefixtures('single_thread')
def test_gpu_script_vision_flags(tmp_path):
    script = (ROOT / 'benchmarks' / 'gpu.sh').read_text()
    flags = shlex.split(re.search(r'^VISION_FLAGS="([^"]*)"', script, flags=re.M).group(1))
    assert 'benchmarks/vision_speed.py --setting "$SETTING" --device "$DEVICE" $VISION_FLAGS' in script
    assert 'for SETTING in vit_b16 clip_b32' in script
    bench = load_script('benchmarks', 'vision_speed')
    args = bench.parse_args(['--setting', 'vit_b16', *flags])
    assert args.repeats == 5 and args.unit_subset == 64 and args.memory_budget == 1 << 34
    flags[flags.index('--repeats') + 1] = '1'
    runs = bench.main(['--setting', 'tiny_clip', '--family', 'conservative', '--out', str(tmp_path), *flags])
    assert runs[0]['unit_major']['towers'][0]['units_timed'] == 32  # the subset capped at h
