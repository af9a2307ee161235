"""The speed benchmark runs end to end on a tiny model, and its reference rows agree with the exact engine (its
timings are not checked: speed goals live in benchmarks/, never in timed tests)."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f'benchmark_{name}', ROOT / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures('single_thread')
def test_speed_benchmark_tiny_run(tmp_path):
    speed = _load('speed')
    speed.main(['--model', 'smallresnet', '--size', '8', '8', '--patch', '4', '--fractions', '0.25', '--seeds', '1',
                '--repeats', '1', '--repeats-cheap', '1', '--chunks', '--no-plot', '--out', str(tmp_path)])
    rows = {row['method']: row for row in csv.DictReader(open(tmp_path / 'results.csv'))}
    summary = json.loads((tmp_path / 'results.json').read_text())
    # the naive per-unit Zennit loops (fast rules and Zennit's own) reproduce the exact engine (float32)
    assert float(rows['naive Zennit loop']['rel_fro']) < 1e-3
    assert float(rows['naive Zennit loop, Zennit rules']['rel_fro']) < 1e-3
    for method in ('select', 'sample', 'gaussian', 'orthogonal', 'sign', 'plain Jacobian (floor)'):
        assert method in rows
    assert summary['exact_over_floor'] > 0 and summary['naive_zennit_rules_over_exact'] > 0
