"""Cost of exact BiLRP on vision transformers: a ViT-B/16 image pair and a CLIP ViT-B/32 image-caption pair, under
both rule families, against the floor of min(h, P) plain vector-Jacobian products of the same towers.

Usage::

    python benchmarks/vision_speed.py --threads 2                      # both settings, both families (CPU: ~1 h)
    python benchmarks/vision_speed.py --setting vit_b16 --family conservative --repeats 3
    python benchmarks/vision_speed.py --setting clip_b32 --device cuda   # on a GPU (see benchmarks/gpu.sh)
    python benchmarks/vision_speed.py --table                          # only rewrite table.md from the JSON files

Settings (random weights: nothing is downloaded; the cost does not depend on the weights):

- ``vit_b16``: image-image, torchvision ``vit_b_16`` (224 x 224, patch 16: P = 196 patch tokens, h = 768, the
  class token after the final LayerNorm), cosine similarity, one pair through one joint forward pass, relevance
  pooled on the model's 14 x 14 patch grid;
- ``clip_b32``: image-text, Hugging Face ``CLIPModel(CLIPConfig())`` (the default sizes are CLIP ViT-B/32: vision
  768-d, 12 layers, patch 32 at 224 x 224: P = 49; text 512-d, 12 layers; projection h = 512), a caption of
  ``--tokens`` token ids (start, random words, end of text), cosine of the projected embeddings, relevance patch x
  token;
- ``tiny_vit``, ``tiny_clip``: the same code paths on tiny models (the test suite runs them).

For each setting and family the script records the plan the engine's cost model chooses (per tower), the exact
pair explanation (no marginals) timed ``--repeats`` times after one warm-up (median and minimum), the floor (min(h,
P) plain VJPs per tower, without LRP rules, the faster of one pass per seed and ``is_grads_batched`` chunks of 16,
timed right after each exact run, so that both see the same load; exact / floor is the median of these paired
ratios), and the h-pass unit-major path timed on ``--unit-subset`` units and extrapolated to h
(its factor rows are checked against the exact result). ``<out>/<setting>_<family>.json`` keeps each run (with the
load average of the machine before and after it); ``<out>/results.csv`` and ``<out>/table.md`` are rebuilt from all
JSON files in ``<out>`` after each run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import plain_vjps, timed  # noqa: E402  (the floor and the timer of the ResNet benchmark)

from zennit_bilrp import BiLRP, Pooling  # noqa: E402
from zennit_bilrp.lrp.attention import FAMILIES  # noqa: E402
from zennit_bilrp.lrp.towers import ImageEncoder  # noqa: E402
from zennit_bilrp.lrp.transformers import TransformerLRP  # noqa: E402

#: the settings: kind (image-image or image-text) and what they model
SETTINGS = {
    'vit_b16': ('image-image', 'torchvision vit_b_16, 224 x 224, patch 16, class token (h = 768)'),
    'clip_b32': ('image-text', 'Hugging Face CLIPModel(CLIPConfig()): ViT-B/32 at 224 x 224 and the 12-layer text '
                               'tower, projection h = 512'),
    'tiny_vit': ('image-image', 'tiny torchvision VisionTransformer (16 x 16, patch 8, hidden 32, 2 layers)'),
    'tiny_clip': ('image-text', 'tiny CLIPModel (16 x 16, patch 8, hidden 16, 2 layers, projection 32)'),
}
#: the floor's batched chunk (seeds per ``is_grads_batched`` pass)
FLOOR_CHUNK = 16


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--setting', nargs='+', default=['vit_b16', 'clip_b32'], choices=sorted(SETTINGS))
    parser.add_argument('--family', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    parser.add_argument('--tokens', type=int, default=12, help='caption length L of clip_b32 (with start and end)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs of the exact pair and of the floor')
    parser.add_argument('--no-warmup', action='store_true', help='time without a warm-up run')
    parser.add_argument('--floor-chunk', type=int, default=None,
                        help='seeds per batched pass of the floor (default: the faster of 1 and 16, timed once each)')
    parser.add_argument('--unit-subset', type=int, default=16,
                        help='units timed on the h-pass unit-major path, extrapolated to h (0: skip)')
    parser.add_argument('--memory-budget', type=int, default=1 << 30, help="the engine's memory_budget in bytes")
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--out', default='benchmarks/results/vision_cost')
    parser.add_argument('--table', action='store_true', help='only rebuild results.csv and table.md from the JSON')
    args = parser.parse_args(argv)
    if not args.table and torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda requested but CUDA is not available')
    if args.repeats < 1 or args.tokens < 2 or (args.floor_chunk is not None and args.floor_chunk < 1):
        parser.error('--repeats and --floor-chunk must be at least 1, --tokens at least 2')
    return args


def build(setting: str, device: torch.device, dtype: torch.dtype, tokens: int, seed: int = 0) -> dict:
    """The towers and inputs of a setting: ``{'towers': [(name, model, x, pooling)], 'pair': (x_a, x_b, pooling,
    pooling_b), 'engine': callable(family) -> BiLRP}``."""
    torch.manual_seed(seed)
    if setting in ('vit_b16', 'tiny_vit'):
        import torchvision

        if setting == 'vit_b16':
            model = torchvision.models.vit_b_16()
        else:
            model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                         hidden_dim=32, mlp_dim=64)
        encoder = ImageEncoder(model.eval()).to(device=device, dtype=dtype)
        size = encoder.image_size
        x_a, x_b = (torch.randn(1, 3, *size, device=device, dtype=dtype) for _ in range(2))
        pooling = encoder.patch_pooling(*size)

        def engine(family, method='auto', budget=1 << 30):
            return BiLRP(encoder, composite=TransformerLRP(family), similarity='cosine', method=method,
                         memory_budget=budget)
        return {'towers': [('image pair', encoder, torch.cat([x_a, x_b]), pooling)],
                'pair': (x_a, x_b, pooling, pooling), 'engine': engine, 'joint': True}
    import transformers

    from zennit_bilrp.models.clip import image_text_model

    if setting == 'clip_b32':
        config = transformers.CLIPConfig()
    else:
        config = transformers.CLIPConfig(
            text_config=dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=16, bos_token_id=1,
                             eos_token_id=99),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                               image_size=16, patch_size=8), projection_dim=32)
        tokens = min(tokens, 16)
    config.vision_config.attn_implementation = config.text_config.attn_implementation = 'eager'
    model = image_text_model(transformers.CLIPModel(config).eval().to(device=device, dtype=dtype))
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    eos = config.text_config.eos_token_id
    ids = torch.randint(1, eos - 1, (1, tokens), device=device)
    ids[0, 0], ids[0, -1] = config.text_config.bos_token_id, eos
    caption = model.text.embed(ids).to(dtype)  # mask up to the end-of-text token: all L positions
    pooling = model.image.patch_pooling(size, size)

    def engine(family, method='auto', budget=1 << 30):
        return model.bilrp(family=family, method=method, memory_budget=budget)
    return {'towers': [('image', model.image, pixels, pooling), ('caption', model.text, caption, None)],
            'pair': (pixels, caption, pooling, None), 'engine': engine, 'joint': False}


def tower_plans(setup: dict, family: str) -> list:
    """The plan the engine's cost model makes for each tower (a pair of one tower: the joint forward's plan)."""
    plans = []
    for name, model, x, pooling in setup['towers']:
        engine = BiLRP(model, composite=TransformerLRP(family), similarity='cosine')
        plan = engine.plan(x, pooling=pooling)
        h = engine.embed(x[:1]).shape[1]
        patches = Pooling.ensure(pooling).resolve(x.shape[1:]).num_patches
        plans.append({'tower': name, 'h': h, 'patches': patches, 'path': plan.path, 'passes': plan.passes,
                      'describe': plan.describe()})
    return plans


def floor_chunks(setup: dict, device: torch.device, fixed: Optional[int] = None) -> list:
    """Per tower: ``(name, model, x, count, chunk, grid)`` of the floor, min(h, P) plain VJPs without rules; the
    chunk is ``fixed``, or the faster (timed once) of one pass per seed and batched chunks of :data:`FLOOR_CHUNK`
    seeds."""
    chosen = []
    for name, model, x, pooling in setup['towers']:
        grid = Pooling.ensure(pooling).resolve(x.shape[1:])
        with torch.no_grad():
            h = model(x[:1]).shape[1]
        count = min(h, grid.num_patches)
        if fixed is not None:
            chosen.append((name, model, x, count, min(count, fixed), grid))
            continue
        best = None
        for chunk in sorted({1, min(count, FLOOR_CHUNK)}):
            try:
                seconds = _seconds(lambda m=model, v=x, n=count, c=chunk, g=grid: plain_vjps(m, v, n, c, g), device)
            except (RuntimeError, TypeError) as error:  # a backward that does not batch
                print(f'floor {name}: chunk {chunk} failed ({error})')
                continue
            if best is None or seconds < best[0]:
                best = (seconds, chunk)
        chosen.append((name, model, x, count, best[1], grid))
    return chosen


def _seconds(fn, device: torch.device) -> float:
    """Wall seconds of one call of ``fn``."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(setup: dict, family: str, device: torch.device, repeats: int, budget: int,
                     floor_chunk: Optional[int] = None) -> tuple:
    """The exact pair explanation (``method='auto'``, no marginals) and the floor, timed alternately ``repeats``
    times (on a shared machine both then see the same load): ``(exact times, floor times, floor towers, result)``."""
    engine = setup['engine'](family, budget=budget)
    x_a, x_b, pooling, pooling_b = setup['pair']
    result = []

    def exact():
        result[:] = [engine.explain(x_a, x_b, pooling=pooling, pooling_b=pooling_b, marginals=False)]

    towers = floor_chunks(setup, device, floor_chunk)

    def floor():
        for _, model, x, count, chunk, grid in towers:
            plain_vjps(model, x, count, chunk, grid)

    if not NO_WARMUP[0]:
        exact()
    exact_times, floor_times = [], []
    for _ in range(repeats):
        exact_times.append(_seconds(exact, device))
        floor_times.append(_seconds(floor, device))
    described = [{'tower': name, 'vjps': count, 'chunk': chunk} for name, _, _, count, chunk, _ in towers]
    return exact_times, floor_times, described, result[0]


def time_unit_major(setup: dict, family: str, result, device: torch.device, units: int, budget: int) -> dict:
    """The h-pass path: the factors of the first ``units`` units per tower (unit-major), extrapolated to h; the
    largest relative deviation of those factor rows from the exact result's."""
    engine = setup['engine'](family, method='batched', budget=budget)
    x_a, x_b, pooling, pooling_b = setup['pair']
    total, error, counts = 0.0, 0.0, []
    sides = [('a', torch.cat([x_a, x_b]), pooling)] if setup['joint'] else [('a', x_a, pooling), ('b', x_b, pooling_b)]
    exact = {'a': torch.cat([result.factors_a.relevance, result.factors_b.relevance]) if setup['joint']
             else result.factors_a.relevance, 'b': result.factors_b.relevance}
    for tower, x, pool in sides:
        h = exact[tower].shape[1]
        count = min(units, h)
        subset = torch.arange(count, device=x.device)
        seconds, _, factors = timed(lambda v=x, p=pool, t=tower, u=subset: engine.factors(v, p, tower=t, units=u),
                                    device, 1)
        reference = exact[tower][:, :count].double()
        error = max(error, float((factors.relevance.double() - reference).abs().max() / reference.abs().max()))
        total += seconds * h / count
        counts.append({'tower': tower, 'units_timed': count, 'h': h, 'seconds_extrapolated': seconds * h / count})
    return {'seconds': total, 'towers': counts, 'factor_rows_rel_error': error}


#: time the exact pair after a warm-up run (``--no-warmup`` turns it off)
NO_WARMUP = [False]


def run(setting: str, family: str, args: argparse.Namespace, out: Path) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    load_before = os.getloadavg()
    setup = build(setting, device, dtype, args.tokens)
    plans = tower_plans(setup, family)
    for plan in plans:
        print(f'[{setting} {family}] {plan["tower"]}: {plan["describe"]}', flush=True)
    times, floor_times, floor_towers, result = time_interleaved(setup, family, device, args.repeats,
                                                                args.memory_budget, args.floor_chunk)
    print(f'[{setting} {family}] exact: {", ".join(f"{t:.2f}" for t in times)} s; floor: '
          f'{", ".join(f"{t:.2f}" for t in floor_times)} s ({floor_towers})', flush=True)
    floor = {'seconds': statistics.median(floor_times), 'all_seconds': floor_times, 'towers': floor_towers}
    unit_major = time_unit_major(setup, family, result, device, args.unit_subset,
                                 args.memory_budget) if args.unit_subset else None
    if unit_major is not None:
        print(f'[{setting} {family}] unit-major (extrapolated): {unit_major["seconds"]:.1f} s, factor rows vs exact '
              f'{unit_major["factor_rows_rel_error"]:.2g}', flush=True)
    median = statistics.median(times)
    relevance = result.relevance
    summary = {
        'setting': setting, 'kind': SETTINGS[setting][0], 'model': SETTINGS[setting][1], 'family': family,
        'weights': 'random (no downloads)', 'dtype': args.dtype, 'device': str(device),
        'threads': torch.get_num_threads(), 'cpu': platform.processor() or platform.machine(),
        'torch': torch.__version__, 'pairs': 1, 'relevance_shape': list(relevance.shape[1:]),
        'plans': plans, 'passes': sum(plan['passes'] for plan in plans),
        'exact_seconds': times, 'exact_median': median, 'exact_min': min(times),
        'floor': floor, 'exact_over_floor_per_run': [t / f for t, f in zip(times, floor_times)],
        'exact_over_floor': statistics.median(t / f for t, f in zip(times, floor_times)),
        'unit_major': unit_major, 'unit_major_over_exact': None if unit_major is None else
        unit_major['seconds'] / median,
        'similarity': float(result.similarity[0]), 'sum_relevance': float(relevance.sum()),
        'load_average_before': load_before, 'load_average_after': os.getloadavg(),
        'nice': os.getpriority(os.PRIO_PROCESS, 0), 'argv': sys.argv[1:],
        'date': time.strftime('%Y-%m-%d %H:%M'),
    }
    (out / f'{setting}_{family}.json').write_text(json.dumps(summary, indent=2))
    return summary


def _passes(summary: dict) -> str:
    return '; '.join(f"{p['tower']}: {p['path'].replace('patches', 'patch-major').replace('units', 'unit-major')} "
                     f"{p['passes']} (h = {p['h']}, P = {p['patches']})" for p in summary['plans'])


def write_table(out: Path) -> list:
    """Rebuild ``results.csv`` and ``table.md`` from every ``<setting>_<family>.json`` in ``out``."""
    runs = [json.loads(path.read_text()) for path in sorted(out.glob('*_*.json'))]
    for run in runs:  # the paired ratio: exact and floor timed one after the other, under the same load
        run['exact_over_floor'] = statistics.median(run['exact_over_floor_per_run'])
    order = list(SETTINGS)
    runs.sort(key=lambda s: (order.index(s['setting']), list(FAMILIES).index(s['family'])))
    keys = ['setting', 'family', 'kind', 'device', 'threads', 'dtype', 'passes', 'exact_median', 'exact_min',
            'floor_seconds', 'exact_over_floor', 'unit_major_seconds', 'unit_major_over_exact',
            'factor_rows_rel_error', 'load_before', 'load_after', 'date']
    with open(out / 'results.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for s in runs:
            um = s['unit_major'] or {}
            writer.writerow({
                'setting': s['setting'], 'family': s['family'], 'kind': s['kind'], 'device': s['device'],
                'threads': s['threads'], 'dtype': s['dtype'], 'passes': _passes(s),
                'exact_median': f"{s['exact_median']:.3f}", 'exact_min': f"{s['exact_min']:.3f}",
                'floor_seconds': f"{s['floor']['seconds']:.3f}", 'exact_over_floor': f"{s['exact_over_floor']:.2f}",
                'unit_major_seconds': f"{um['seconds']:.1f}" if um else '',
                'unit_major_over_exact': f"{s['unit_major_over_exact']:.1f}" if um else '',
                'factor_rows_rel_error': f"{um['factor_rows_rel_error']:.1e}" if um else '',
                'load_before': f"{s['load_average_before'][0]:.1f}", 'load_after': f"{s['load_average_after'][0]:.1f}",
                'date': s['date']})
    lines = ['| setting | rule family | passes the plan chose (per tower) | exact s / pair (median; min) | '
             'floor: min(h, P) plain VJPs | exact / floor | h-pass path / exact | load average |',
             '|---|---|---|---|---|---|---|---|']
    for s in runs:
        um = f"{s['unit_major_over_exact']:.1f}x" if s['unit_major'] else '-'
        lines.append(f"| {s['setting']} ({s['kind']}) | {s['family']} | {_passes(s)} | {s['exact_median']:.2f} "
                     f"({s['exact_min']:.2f}) | {s['floor']['seconds']:.2f} s | {s['exact_over_floor']:.2f}x | {um} | "
                     f"{s['load_average_before'][0]:.1f} -> {s['load_average_after'][0]:.1f} |")
    if runs:
        first = runs[0]
        lines += ['', f"{first['device']}, {first['threads']} torch threads, {first['dtype']}, torch {first['torch']}, "
                      'random weights; timed runs per row: '
                      f"{', '.join(str(len(s['exact_seconds'])) for s in runs)} (median, minimum); the floor runs its "
                      'seeds in is_grads_batched chunks (per tower in the JSON: the faster of 1 and '
                      f'{FLOOR_CHUNK}, or --floor-chunk); exact / floor is the median of the ratios of runs timed one '
                      'after the other; the h-pass path is timed on a unit subset and extrapolated to h.']
    (out / 'table.md').write_text('\n'.join(lines) + '\n')
    return runs


def main(argv=None) -> list:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        if args.threads:
            torch.set_num_threads(args.threads)
        NO_WARMUP[0] = args.no_warmup
        for setting in args.setting:
            for family in args.family:
                run(setting, family, args, out)
                write_table(out)
    runs = write_table(out)
    print((out / 'table.md').read_text())
    return runs


if __name__ == '__main__':
    main()
