"""Interleaved re-timing of the three exact ways to explain one pair and the floor, on a shared machine.

Load changes during a long run; timing the candidates in turn, ``--rounds`` times, and keeping each one's minimum
exposes them to the same load. Candidates: the engine's joint patch-major path (``explain``: one forward of both
inputs, P second-order passes serving both), the single-pair hybrid (F(x_b) by P second-order passes on ``x_b``
alone, then P LRP passes on ``x_a``), and the floor of min(h, P) plain vector-Jacobian products.

Usage::

    python benchmarks/retime_pair.py --model resnet50 --size 224 224 --patch 32 --threads 2 \\
        --out benchmarks/results/resnet50_224_p32/retime.json
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch


def _speed():
    spec = importlib.util.spec_from_file_location('benchmark_speed', Path(__file__).with_name('speed.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    speed = _speed()
    argv = list(sys.argv[1:] if argv is None else argv)
    rounds = 2
    if '--rounds' in argv:
        index = argv.index('--rounds')
        rounds = int(argv[index + 1])
        del argv[index:index + 2]
    args = speed.parse_args(argv + ['--no-estimators', '--no-plot'])
    if args.threads:
        torch.set_num_threads(args.threads)
    speed.WARMUP[0] = False
    bench = speed.Bench(args)
    engine = bench.engine()
    h = engine.embed(bench.x_a[:1]).shape[1]
    count = min(h, bench.grid.num_patches)
    timings: dict = {'exact (joint, auto path)': [], 'exact hybrid (pair)': [], 'plain VJP floor': []}
    reference = None
    for _ in range(rounds):
        seconds, _, result = speed.timed(lambda: bench.explain(engine), bench.device, 1)
        timings['exact (joint, auto path)'].append(seconds)
        reference = result.relevance.double()
        bench.rows = []
        speed.time_hybrid(bench, reference, h)
        timings['exact hybrid (pair)'].append(bench.rows[-1]['seconds'])
        seconds, _, _ = speed.timed(lambda: speed.plain_vjps(bench.model, bench.x, count, 1, bench.grid),
                                    bench.device, 1)
        timings['plain VJP floor'].append(seconds)
        print({k: v[-1] for k, v in timings.items()}, flush=True)
    best = {k: min(v) for k, v in timings.items()}
    summary = {'model': args.model, 'input': list(bench.x.shape), 'patches': bench.grid.num_patches, 'h': h,
               'threads': torch.get_num_threads(), 'rounds': rounds, 'seconds': timings, 'minimum': best,
               'exact_over_floor': best['exact (joint, auto path)'] / best['plain VJP floor'],
               'hybrid_over_exact': best['exact hybrid (pair)'] / best['exact (joint, auto path)'],
               'load_average': os.getloadavg(), 'time': time.strftime('%Y-%m-%d %H:%M:%S')}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
