"""Correspondence benchmark: which pairwise explanation shows the parts of two images that truly match?

Pairs (zennit_bilrp.analysis.correspondence.correspondence_pairs): scikit-image's stereo pair with its ground-truth
disparity and four geometric transforms (shift, mirror, zoom, rotation and their mixtures) of each of six photos,
25 pairs whose dense correspondence is known exactly. Model: the pretrained ImageNet EfficientNet-Lite0 (1280-d
pooled features, cosine similarity, ImageNet-normalized inputs; the ``pretrained`` extra), or ``--model toy`` (the
shipped demo encoder, for tests).

Methods (METHODS; BiLRP candidates in COMPOSITES, a table other scripts extend by importing it):
  bilrp_<name>      exact BiLRP with the composite COMPOSITES[name](model): 'default' = composite_for(model,
                    'imagenet') (today mobile_composite), 'epsilon_gamma_box' = Zennit's EpsilonGammaBox(gamma=0.25,
                    ImageNet pixel box, biases kept), 'epsilon_plus' = Zennit's EpsilonPlus (biases zeroed)
  saliency_outer    outer product of Captum Saliency marginals (zennit_bilrp.interop.baselines)
  ixg_outer         outer product of Captum InputXGradient marginals
  ig_outer          outer product of Captum IntegratedGradients marginals (--ig-steps, zero = mean-colour baseline)
  hessian_product   x x' d2y/dxdx' (zennit_bilrp.analysis.patch_jacobians: P forward-mode passes per image,
                    equal to the h-pass interop.baselines.hessian_product to 1e-12 in the tests)
  integrated_jac    integrated Jacobians from per-image mean-colour references, --ij-steps Gauss-Legendre points
                    (patch_jacobians, equal to interop.baselines.integrated_jacobians)
  oracle, random    controls: the true correspondence (1 on matching patch pairs) and Gaussian noise

Scores per method, pair and patch size (zennit_bilrp.analysis.correspondence_benchmark.evaluate): top-k pointing
(share of the top-k patch pairs whose patch in B holds the true image of the A patch's centre; pairs whose A patch
has no counterpart are left out) with its chance level 1/P_b, the mean correspondence error of the top-k pairs in
pixels with its chance level, the same pointing for the outer product of the method's own marginals, pairwise
insertion AUC (reveal the top pairs' patches in both mean-colour images at equal revealed area; mean cosine along
the curve, higher is better), the top singular share of BiLRP's factors, sum R / y, and seconds per pair. Methods
run once per pair at the finest patch size and coarser sizes are sums of it (exactly what running at the coarser
size gives); so s/pair is the time at the finest size. ``--coarse-only`` methods run at the coarsest size only.

Run:   python benchmarks/correspondence.py --out benchmarks/results/correspondence
Quick: python benchmarks/correspondence.py --pairs 5 --patch 32 --methods bilrp_default hessian_product
Results are cached per method and pair in --out/cache (NPZ; an interrupted run resumes; --force recomputes).
Writes per_pair.csv, summary.csv, summary.json (settings, summary, the insertion sanity check), table.md,
correspondence.png (scores) and correspondence_pairs.png (an example pair drawn by each method).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from zennit_bilrp import canonizers_for, composite_for
from zennit_bilrp.analysis import patch_jacobians
from zennit_bilrp.analysis.correspondence import correspondence_pairs, oracle_relevance, patch_truth
from zennit_bilrp.analysis.correspondence_benchmark import SCORES, bilrp_method, evaluate, summarize
from zennit_bilrp.analysis.pair_insertion import pair_insertion
from zennit_bilrp.analysis.randomization import cascading_randomization
from zennit_bilrp.core.results import package_versions
from zennit_bilrp.interop.baselines import marginal_outer_product, pair_similarity
from zennit_bilrp.lrp.composites import imagenet_bounds


def _epsilon_gamma_box(model, bounds):
    from zennit.composites import EpsilonGammaBox

    low, high = bounds
    return EpsilonGammaBox(low=low, high=high, gamma=0.25, canonizers=canonizers_for(model))


def _epsilon_plus(model):
    from zennit.composites import EpsilonPlus

    return EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))


#: BiLRP candidates: name -> (composite factory for ImageNet-normalized inputs, for inputs in [0, 1]); each becomes
#: the method 'bilrp_<name>'. The rules study adds its own candidates to this table before calling build_methods.
COMPOSITES: dict = {
    'default': (lambda model: composite_for(model, 'imagenet'), lambda model: composite_for(model, 'unit')),
    'conserving': (lambda model: composite_for(model, 'imagenet', conservative=True),
                   lambda model: composite_for(model, 'unit', conservative=True)),
    'epsilon_gamma_box': (lambda model: _epsilon_gamma_box(model, imagenet_bounds(_dtype(model))),
                          lambda model: _epsilon_gamma_box(model, (0.0, 1.0))),
    'epsilon_plus': (_epsilon_plus, _epsilon_plus),
}
#: the baselines (built by baseline_methods) and controls, in table order
BASELINES = ('saliency_outer', 'ixg_outer', 'ig_outer', 'hessian_product', 'integrated_jac')
CONTROLS = ('oracle', 'random')


def _dtype(model):
    return next(model.parameters()).dtype


def composite_names() -> list:
    return [f'bilrp_{name}' for name in COMPOSITES]


def all_methods() -> list:
    return composite_names() + list(BASELINES)


#: the methods run when --methods is not given: the default and the previous (conserving) rules and every baseline;
#: Zennit's composites (slow to differentiate through depthwise convolutions) are compared in the rules study
DEFAULT_METHODS = ('bilrp_default', 'bilrp_conserving') + BASELINES


def baseline_methods(embed: Callable, similarity: str = 'cosine', ig_steps: int = 16, ij_steps: int = 8) -> dict:
    """The Captum-style baselines as evaluate() methods ``(x_a, x_b, patch) -> (B, P_a, P_b)``."""
    def outer(kind, **kwargs):
        return lambda a, b, patch: marginal_outer_product(embed, a, b, kind, similarity, pooling=patch, **kwargs)

    return {
        'saliency_outer': outer('saliency'),
        'ixg_outer': outer('input_x_gradient'),
        'ig_outer': outer('integrated_gradients', n_steps=ig_steps),
        'hessian_product': lambda a, b, patch: patch_jacobians.hessian_product(embed, a, b, similarity, pooling=patch),
        'integrated_jac': lambda a, b, patch: patch_jacobians.integrated_jacobians(
            embed, a, b, similarity, pooling=patch, reference='mean', n_steps=ij_steps),
    }


def build_methods(model, names, imagenet: bool = True, similarity: str = 'cosine', ig_steps: int = 16,
                  ij_steps: int = 8, composites: dict = None) -> dict:
    """evaluate() methods by name: 'bilrp_<candidate>' from ``composites`` (default :data:`COMPOSITES`) and the
    :data:`BASELINES`."""
    composites = COMPOSITES if composites is None else composites
    baselines = baseline_methods(model, similarity, ig_steps, ij_steps)
    methods = {}
    for name in names:
        if name in baselines:
            methods[name] = baselines[name]
        elif name.startswith('bilrp_') and name[len('bilrp_'):] in composites:
            factory = composites[name[len('bilrp_'):]][0 if imagenet else 1]
            methods[name] = bilrp_method(model, factory, similarity)
        else:
            raise ValueError(f'unknown method {name!r}; choose from {all_methods()} (or add a composite to '
                             'COMPOSITES)')
    return methods


def load_model(kind: str):
    """``(model, preprocess, imagenet)``: the pretrained Lite0 with ImageNet normalization, or the toy demo encoder
    on [0, 1] pixels."""
    if kind == 'lite0':
        from zennit_bilrp.models.pretrained import imagenet_normalize, load_pretrained_encoder

        return load_pretrained_encoder(), imagenet_normalize, True
    if kind == 'toy':
        from zennit_bilrp.models.demo import load_demo_model

        return load_demo_model(), (lambda x: x), False
    raise ValueError(f'unknown model {kind!r}')


def subset_indices(count: int, total: int) -> list:
    """``count`` pair indices spread evenly over ``0..total-1`` (always the first)."""
    if count >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def sanity_check(pairs, forward, preprocess, patches, insertion: dict, seed: int = 0) -> dict:
    """Oracle vs random order under pairwise insertion and under pairwise deletion (the same schedule hiding patches
    of the intact images): per patch size the mean AUCs and the number of pairs where the oracle is better."""
    out = {}
    for patch in patches:
        entry = {}
        for mode in ('insertion', 'deletion'):
            oracle, random = [], []
            for index, pair in enumerate(pairs):
                truth = patch_truth(pair, patch)
                x_a, x_b = preprocess(pair.x_a), preprocess(pair.x_b)
                gen = torch.Generator().manual_seed(seed + index)
                noise = torch.randn(truth.match.shape, generator=gen, dtype=torch.float64)
                for store, relevance in ((oracle, oracle_relevance(truth, seed + index)), (random, noise)):
                    curve = pair_insertion(forward, x_a, x_b, relevance, truth.grid_a, truth.grid_b, mode=mode,
                                           **insertion)
                    store.append(curve.auc)
            better = [(o > r) if mode == 'insertion' else (o < r) for o, r in zip(oracle, random)]
            entry[mode] = {'oracle_auc': float(np.mean(oracle)), 'random_auc': float(np.mean(random)),
                           'oracle_better_pairs': int(sum(better)), 'pairs': len(better),
                           'direction': 'higher is better' if mode == 'insertion' else 'lower is better',
                           'passes': bool(np.mean(oracle) > np.mean(random)) if mode == 'insertion'
                           else bool(np.mean(oracle) < np.mean(random))}
        out[str(patch)] = entry
    return out


def fmt(value, spec='{:.3f}'):
    return '-' if value is None or (isinstance(value, float) and not math.isfinite(value)) else spec.format(value)


def _pm(entry: dict, key: str, spec: str = '{:.3f}') -> str:
    """``mean ± standard error`` of a summary entry's score."""
    if entry.get(key) is None:
        return '-'
    return f'{fmt(entry[key], spec)} ± {fmt(entry.get(key + "_se"), spec)}'


def markdown(summary, patches) -> str:
    head = ('method', 'pairs', 'pointing ↑', 'chance', 'error px ↓', 'chance px', 'outer-product pointing',
            'pairwise gain', 'insertion AUC ↑', 'top singular share', 'sum R / y', 's / pair')
    lines = []
    for patch in sorted(patches, reverse=True):
        lines += [f'**{patch}-px patches**', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for s in (s for s in summary if s['patch'] == patch):
            lines.append('| ' + ' | '.join([
                s['method'], str(s['pairs']), _pm(s, 'pointing'), fmt(s.get('chance')), _pm(s, 'error_px', '{:.1f}'),
                fmt(s.get('error_chance'), '{:.1f}'), fmt(s.get('pointing_outer')), fmt(s.get('pointing_gain')),
                _pm(s, 'insertion_auc'), fmt(s.get('singular_share')), fmt(s.get('conservation'), '{:.4f}'),
                fmt(s.get('seconds'), '{:.2f}')]) + ' |')
        lines.append('')
    return '\n'.join(lines)


def plot_scores(summary, patches, path: Path, sanity: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    patches = sorted(patches, reverse=True)
    methods = list(dict.fromkeys(s['method'] for s in summary if s['method'] not in CONTROLS))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    width = 0.8 / len(patches)
    colors = {p: plt.cm.tab10(i) for i, p in enumerate(patches)}
    for j, patch in enumerate(patches):
        rows = {s['method']: s for s in summary if s['patch'] == patch}
        x = np.arange(len(methods)) + (j - (len(patches) - 1) / 2) * width
        for axis, key in ((axes[0], 'pointing'), (axes[1], 'error_px'), (axes[2], 'insertion_auc')):
            values = [rows.get(m, {}).get(key, np.nan) for m in methods]
            errors = [rows.get(m, {}).get(key + '_se', 0.0) for m in methods]
            axis.bar(x, values, width, yerr=errors, capsize=2, color=colors[patch], label=f'{patch}-px patches')
        chance = np.mean([s['chance'] for s in summary if s['patch'] == patch and 'chance' in s])
        axes[0].axhline(chance, color=colors[patch], ls=':', lw=1.5, label=f'chance ({patch} px)')
        axes[1].axhline(np.mean([s['error_chance'] for s in summary if s['patch'] == patch and 'error_chance' in s]),
                        color=colors[patch], ls=':', lw=1.5, label=f'random pairs ({patch} px)')
        for control, style in (('oracle', '--'), ('random', '-.')):
            if control in rows and 'insertion_auc' in rows[control]:
                axes[2].axhline(rows[control]['insertion_auc'], color=colors[patch], ls=style, lw=1.2,
                                label=f'{control} ({patch} px)')
    axes[0].set_title('top-10 pointing at the true correspondence ↑ (oracle: 1)')
    axes[1].set_title('correspondence error of the top-10 pairs (px) ↓ (oracle ≈ 0)')
    axes[2].set_title('pairwise insertion AUC (mean cosine) ↑')
    for axis in axes:
        axis.set_xticks(np.arange(len(methods)))
        axis.set_xticklabels(methods, rotation=40, ha='right', fontsize=8)
        axis.legend(fontsize=7, loc='upper right')
    axes[0].set_ylim(0, 1.05)
    values = [s.get('insertion_auc') for s in summary if s.get('insertion_auc') is not None]
    if values:
        axes[2].set_ylim(min(values) - 0.05, max(values) + 0.08)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pair(rows, pair, patch: int, methods, path: Path, k: int) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from zennit_bilrp.app.viz import plot_bilrp_stack

    items = []
    for method in methods:
        row = next((r for r in rows if r['method'] == method and r['pair'] == pair.name and r['patch'] == patch), None)
        if row is None:
            continue
        title = (f'{method} on {pair.name} ({patch}-px patches): top-{k} pointing {row["pointing"]:.2f}, '
                 f'error {row["error_px"]:.1f} px')
        items.append((row['relevance'], pair.x_a, pair.x_b, title))
    if not items:
        return
    fig = plot_bilrp_stack(items, k=k, by='value', patch=patch, width=7.0, marginals=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_randomization(rows, path: Path) -> None:
    """Spearman correlation with the original explanation against the number of blocks randomized from the top."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, method in enumerate(dict.fromkeys(r['method'] for r in rows)):
        sub = [r for r in rows if r['method'] == method]
        steps = [r['randomized'] for r in sub]
        for axis, key in zip(axes, ('spearman', 'spearman_abs')):
            axis.plot(steps, [r[key] for r in sub], marker='o', color=plt.cm.tab10(i), label=method)
    blocks = {r['randomized']: r['block'] for r in rows}
    for axis, title in zip(axes, ('Spearman rank correlation with the original', 'the same, of |relevance|')):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel('blocks randomized from the top (last: ' + ', '.join(
            f'{k}: {v}' for k, v in sorted(blocks.items()) if k in (1, max(blocks))) + ')', fontsize=8)
        axis.axhline(0, color='grey', lw=0.8)
        axis.set_ylim(-0.3, 1.05)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel('rank correlation')
    axes[0].legend(fontsize=8, loc='lower left')
    pair = rows[0]['pair'] if rows else ''
    fig.suptitle(f'cascading model randomization (Adebayo et al. 2018), {pair}, {rows[0]["patch"]}-px patches',
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, rows, columns) -> None:
    with open(path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, '') for key in columns})


def run_randomization(model, pairs, preprocess, imagenet, patch, methods, steps, similarity, out: Path) -> list:
    """Cascading randomization of Lite0's blocks on the first pair, for each method: Spearman of the pooled
    relevance with the original."""
    pair = pairs[0]
    x_a, x_b = preprocess(pair.x_a), preprocess(pair.x_b)
    rows = []
    for name in methods:
        def explain(copy, name=name):
            method = build_methods(copy, [name], imagenet, similarity, ij_steps=4)[name]
            output = method(x_a, x_b, patch)
            return output.relevance if hasattr(output, 'relevance') else output
        for row in cascading_randomization(model, explain, steps=steps, progress=True):
            rows.append({'method': name, 'pair': pair.name, 'patch': patch, **row})
    write_csv(out / 'randomization.csv', rows, ['method', 'pair', 'patch', 'randomized', 'block', 'spearman',
                                                'spearman_abs'])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('benchmarks/results/correspondence'))
    parser.add_argument('--model', choices=('lite0', 'toy'), default='lite0')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 192), metavar=('H', 'W'))
    parser.add_argument('--patch', type=int, nargs='+', default=(32, 16))
    parser.add_argument('--pairs', type=int, default=25)
    parser.add_argument('--k', type=int, default=10)
    parser.add_argument('--methods', nargs='+', default=None,
                        help=f'default: {list(DEFAULT_METHODS)}; choose from {all_methods()}')
    parser.add_argument('--coarse-only', nargs='*', default=['bilrp_epsilon_gamma_box', 'bilrp_epsilon_plus'],
                        help='methods run at the largest patch size only (to save time)')
    parser.add_argument('--subset', nargs='*', default=['integrated_jac=9'], metavar='METHOD=N',
                        help='run a method on N pairs spread over the set only')
    parser.add_argument('--ig-steps', type=int, default=16)
    parser.add_argument('--ij-steps', type=int, default=8)
    parser.add_argument('--points', type=int, default=12, help='insertion budget points')
    parser.add_argument('--fill', choices=('mean', 'blur'), default='mean')
    parser.add_argument('--no-sanity', action='store_true', help='skip the oracle-vs-random insertion/deletion check')
    parser.add_argument('--randomization', nargs='*', default=None, metavar='METHOD',
                        help='also run cascading model randomization on the first pair for these methods')
    parser.add_argument('--randomization-steps', type=int, nargs='+', default=None)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--force', action='store_true', help='delete the cache first')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = args.out
    if args.force and (out / 'cache').exists():
        shutil.rmtree(out / 'cache')
    out.mkdir(parents=True, exist_ok=True)
    names = list(args.methods or DEFAULT_METHODS)
    model, preprocess, imagenet = load_model(args.model)
    similarity = 'cosine'
    patches = sorted(set(args.patch))
    pairs = correspondence_pairs(tuple(args.size), count=args.pairs)
    subsets = {}
    for spec in args.subset or []:
        method, _, count = spec.partition('=')
        subsets[method] = subset_indices(int(count), len(pairs))
    methods = build_methods(model, names, imagenet, similarity, args.ig_steps, args.ij_steps)
    coarse = {name: methods.pop(name) for name in list(methods) if name in set(args.coarse_only or [])}
    forward = pair_similarity(model, similarity)
    insertion = {'points': args.points, 'fill': args.fill}  # budget: a quarter of the patches of both images
    rows = []
    for group, sizes, controls in ((methods, patches, CONTROLS), (coarse, [patches[-1]], ())):
        if group or controls:
            rows.extend(evaluate(group, pairs, sizes, k=args.k, forward=forward, preprocess=preprocess,
                                 controls=controls, insertion=insertion, cache=out / 'cache',
                                 subsets={m: s for m, s in subsets.items() if m in group}, keep_relevance=True))
    summary = summarize(rows)
    on_subsets = {}
    for method, index in subsets.items():
        if method in names:
            chosen = set(index)
            on_subsets[method] = {'pairs': sorted(chosen),
                                  'summary': summarize([r for r in rows if r['index'] in chosen])}
    sanity = None if args.no_sanity else sanity_check(pairs, forward, preprocess, patches, insertion)
    randomization = None
    if args.randomization:
        randomization = run_randomization(model, pairs, preprocess, imagenet, patches[-1], args.randomization,
                                          args.randomization_steps, similarity, out)
    columns = ['method', 'pair', 'kind', 'index', 'patch', 'k', 'valid', *SCORES, 'singular_share_a',
               'singular_share_b', 'similarity']
    write_csv(out / 'per_pair.csv', rows, columns)
    summary_columns = ['method', 'patch', 'pairs'] + [c for s in SCORES for c in (s, f'{s}_se')]
    write_csv(out / 'summary.csv', summary, summary_columns)
    table = markdown(summary, patches)
    (out / 'table.md').write_text(table)
    settings = {'model': args.model, 'size': list(args.size), 'patches': patches, 'pairs': len(pairs),
                'pair_names': [p.name for p in pairs], 'k': args.k, 'methods': names,
                'coarse_only': sorted(coarse), 'subsets': subsets, 'ig_steps': args.ig_steps,
                'ij_steps': args.ij_steps, 'insertion': {'budget': 'a quarter of all patches of both images',
                                                         'points': args.points, 'fill': args.fill},
                'similarity': similarity, 'threads': args.threads, 'versions': package_versions()}
    report = {'settings': settings, 'summary': summary, 'on_subsets': on_subsets, 'sanity': sanity,
              'randomization': randomization, 'wall_seconds': time.perf_counter() - start}
    (out / 'summary.json').write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        plot_scores(summary, patches, out / 'correspondence.png', sanity)
        shown = [m for m in ('bilrp_default', 'hessian_product', 'saliency_outer', 'oracle') if m in names + ['oracle']]
        plot_pair(rows, pairs[0], patches[-1], shown, out / 'correspondence_pairs.png', args.k)
        if randomization:
            plot_randomization(randomization, out / 'randomization.png')
    print(table)
    if sanity:
        for size, entry in sanity.items():
            for mode, check in entry.items():
                print(f'{size}-px {mode}: oracle {check["oracle_auc"]:.4f} vs random {check["random_auc"]:.4f} '
                      f'({check["direction"]}); oracle better on {check["oracle_better_pairs"]}/{check["pairs"]} '
                      f'pairs: {"passes" if check["passes"] else "fails"}')
    print(f'wrote {out} in {time.perf_counter() - start:.0f} s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
