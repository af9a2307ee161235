"""Retrieval cost: rank a gallery by embeddings and explain only the top-k, vs. caching every gallery factor.

Usage::

    python benchmarks/retrieval.py                          # demo model, 100 gallery crops of 64 x 64, top-3
    python benchmarks/retrieval.py --gallery 100 --k 1 3 10 --size 64 64 --device cpu

Both strategies answer the same queries with the same explanations (checked: the largest relative difference of the
top-k pooled relevance is reported):

- ``dense``: :meth:`FactorCache.build(lazy=False) <zennit_bilrp.scale.cache.FactorCache.build>` computes the factors
  of all ``N`` gallery inputs, then :meth:`~zennit_bilrp.scale.cache.FactorCache.query_dense` pairs each query with
  every gallery input and the top-k are read off;
- ``topk``: :meth:`FactorCache.build <zennit_bilrp.scale.cache.FactorCache.build>` (lazy) computes only the
  embeddings, :meth:`~zennit_bilrp.scale.cache.FactorCache.query` ranks by similarity and computes factors for the
  query and its top-k matches only.

The gallery: ``N`` crops (random position and scale, fixed seed) of the photos shipped with scikit-image, resized to
``--size``; queries are further crops. Writes ``retrieval.csv`` (one row per strategy and k) and ``retrieval.json``
(settings, machine, summary) to ``--out`` (default ``out/retrieval``). Times are minima over ``--repeats`` runs;
the saving is the ratio dense / topk measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zennit_bilrp import BiLRP
from zennit_bilrp.models.demo import DEMO_SIMILARITY, demo_composite, load_demo_model
from zennit_bilrp.scale.cache import FactorCache

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'cat', 'immunohistochemistry', 'hubble_deep_field')


def crops(n: int, size: tuple, seed: int) -> torch.Tensor:
    """``n`` crops of the scikit-image photos: random photo, square side 30-90% of the shorter edge, resized."""
    from skimage import data, transform

    photos = [np.asarray(getattr(data, name)(), dtype=np.float64) / 255.0 for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.3, 0.9) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = transform.resize(photo[top:top + side, left:left + side], size, anti_aliasing=True)
        out.append(torch.from_numpy(crop).permute(2, 0, 1).float())
    return torch.stack(out)


def timed(function, repeats: int) -> tuple:
    """Minimum wall time over ``repeats`` calls and the last return value."""
    best, value = float('inf'), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--gallery', type=int, default=100, help='number of gallery inputs N')
    parser.add_argument('--queries', type=int, default=2, help='number of queries')
    parser.add_argument('--k', type=int, nargs='+', default=[3], help='numbers of matches explained per query')
    parser.add_argument('--size', type=int, nargs=2, default=[64, 64], metavar=('H', 'W'))
    parser.add_argument('--patch', type=int, default=8)
    parser.add_argument('--batch-size', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=2, help='timed repetitions of the top-k strategy (minimum)')
    parser.add_argument('--repeats-dense', type=int, default=1, help='timed repetitions of the dense strategy')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='out/retrieval')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark, write CSV and JSON, print a table; returns the summary."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = tuple(args.size)
    model = load_demo_model().to(device)
    gallery = crops(args.gallery, size, seed=0).to(device)
    queries = crops(args.queries, size, seed=1).to(device)
    bilrp = BiLRP(model, composite=demo_composite(model), similarity=DEMO_SIMILARITY)
    rows = []
    with bilrp:
        def dense():
            cache = FactorCache.build(bilrp, gallery, pooling=args.patch, batch_size=args.batch_size, lazy=False,
                                      progress=False)
            return cache.query_dense(bilrp, queries)

        dense_s, (relevance, scores) = timed(dense, args.repeats_dense)
        rows.append({'strategy': 'dense', 'k': args.gallery, 'seconds': dense_s,
                     'factor_computations': args.gallery + args.queries, 'max_rel_diff': 0.0})
        for k in tqdm(args.k, desc='k', leave=False):
            def topk(k=k):
                cache = FactorCache.build(bilrp, gallery, pooling=args.patch, batch_size=args.batch_size,
                                          progress=False)
                return cache, cache.query(bilrp, queries, k=k)

            topk_s, (cache, matches) = timed(topk, args.repeats)
            expected = scores.topk(k, dim=1)
            if not torch.equal(matches.indices, expected.indices.cpu()):
                raise RuntimeError('the two strategies ranked the gallery differently')
            diff = max(float((matches[q].relevance - relevance[q, matches.indices[q]]).abs().max()
                             / relevance[q, matches.indices[q]].abs().max()) for q in range(args.queries))
            rows.append({'strategy': 'topk', 'k': k, 'seconds': topk_s,
                         'factor_computations': cache.n_factors + args.queries, 'max_rel_diff': diff,
                         'saving': dense_s / topk_s})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / 'retrieval.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=['strategy', 'k', 'seconds', 'factor_computations',
                                                    'max_rel_diff', 'saving'])
        writer.writeheader()
        writer.writerows(rows)
    summary = {'settings': {**vars(args), 'size': list(size)}, 'model': 'demo (DemoEncoder, h = 96)',
               'machine': {'platform': platform.platform(), 'threads': torch.get_num_threads(),
                           'device': str(device), 'torch': torch.__version__},
               'rows': rows}
    (out / 'retrieval.json').write_text(json.dumps(summary, indent=2))
    print(f"{'strategy':8s} {'k':>4s} {'seconds':>9s} {'factors':>8s} {'saving':>7s} {'max rel diff':>13s}")
    for row in rows:
        saving = f"{row['saving']:.1f}x" if 'saving' in row else '-'
        print(f"{row['strategy']:8s} {row['k']:4d} {row['seconds']:9.2f} {row['factor_computations']:8d} "
              f"{saving:>7s} {row['max_rel_diff']:13.2e}")
    print(f'wrote {out / "retrieval.csv"} and {out / "retrieval.json"}')
    return summary


if __name__ == '__main__':
    main()
