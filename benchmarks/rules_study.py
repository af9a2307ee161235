"""Rules study: which LRP rules make BiLRP on the pretrained EfficientNet-Lite0 show what matches?

Every candidate composite explains the cosine similarity of the 1280-d pooled features of the correspondence
benchmark's pairs (zennit_bilrp.analysis.correspondence: the stereo pair with its ground-truth disparity and four
geometric transforms of each of six photos, 25 pairs whose dense correspondence is known; ImageNet-normalized,
128 x 192 px by default). One table, one row per candidate, with

  pointing 32 / 16   share of the top-10 patch pairs that link truly corresponding patches (32- / 16-px patches;
                     chance 1/P_b), from zennit_bilrp.analysis.correspondence_benchmark.evaluate
  error 32           mean distance (px) between the true match and the chosen patch of the top-10 pairs
  gain 32            pointing minus the pointing of the outer product of the candidate's own marginals (what the
                     pairwise structure adds)
  share 32           top singular share of the factors F (h x P): 1 = every unit explains the same map
  sum R / y          conservation (mean over pairs) and max |sum R| / |y| (the engine warns above 10)
  grid 2             share of the BiLRP marginals' energy in their period-2 pattern (the stem's stride grid,
                     zennit_bilrp.lrp.stride_rules.stride_grid_energy; mean over the first --grid-pairs pairs)
  s / pair           seconds of one exact explanation (at the finest patch size the candidate ran at)

Candidates (CANDIDATES): z+ everywhere (mobile_composite, the previous default) with each depthwise rule and with
the stride-free pixel rule; Zennit's EpsilonPlus and EpsilonGammaBox; DepthGamma's gamma schedule and a fixed gamma,
with and without biases; MobileEpsilon (z^B / z+ below, relative LRP-epsilon with biases in the top layers) over its
top depth and epsilon, and without biases. The 'full' candidates run on all pairs at 32- and 16-px patches, the
others at 32-px patches (their '16' columns are empty). Baselines come from benchmarks/correspondence.py (the
Hessian x product and integrated Jacobians, forward-mode; their cache may be reused with --reuse-cache). With
--size224 the default and the previous default also run at 224 x 224 (32-px patches, a subset of pairs).

Run:    python benchmarks/rules_study.py --size224 3 --timing 2 --threads 2    (the documented run: STUDY_CANDIDATES,
        writes benchmarks/results/rules_study; hours on 2 CPU cores without the cache)
Split:  run disjoint --candidates lists with --no-report in parallel, then once without them (all cached)
Writes: per_pair.csv, summary.csv, summary.json, table.md, rules_study.png (scores), stride_grid.png (marginals),
example_pairs.png (the stereo pair under the previous and the new default).
Results are cached per candidate and pair (NPZ) in --out/cache; an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from zennit_bilrp import BiLRP
from zennit_bilrp.analysis.correspondence import correspondence_pairs
from zennit_bilrp.analysis.correspondence_benchmark import bilrp_method, evaluate, summarize
from zennit_bilrp.core.results import package_versions
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.choose import composite_for
from zennit_bilrp.lrp.composites import DepthGamma, MobileComposite, MobileEpsilon, imagenet_bounds
from zennit_bilrp.lrp.stride_rules import stride_grid_energy


def _load_benchmark():
    """benchmarks/correspondence.py (the baselines and their settings), imported as a module."""
    path = Path(__file__).resolve().parent / 'correspondence.py'
    spec = importlib.util.spec_from_file_location('correspondence_benchmark_script', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _bounds(model):
    return imagenet_bounds(next(model.parameters()).dtype)


def _zennit(name: str, **kwargs) -> Callable:
    def make(model):
        import zennit.composites

        if name == 'EpsilonGammaBox':
            kwargs.update(zip(('low', 'high'), _bounds(model)))
        return getattr(zennit.composites, name)(canonizers=canonizers_for(model), **kwargs)
    return make


def _mobile_epsilon(**kwargs) -> Callable:
    return lambda model: MobileEpsilon(*_bounds(model), **kwargs)


#: name -> (description, factory(model) -> composite, tier): 'full' runs on all pairs at 32- and 16-px patches,
#: 'screen' on all pairs at 32-px patches, 'subset' on a few pairs (--zennit-pairs) at 32-px patches (Zennit's own
#: rules on depthwise convolutions are slow to differentiate, and rules whose relevance explodes fail the
#: patch-major path's linearity check and fall back to one pass per unit), 'single' on the stereo pair only (rules
#: whose relevance explodes: one pair shows it, and their unit-major fallback takes 1280 passes a pair)
CANDIDATES: dict = {
    'zplus': ('z+ everywhere, z+/w^2 on depthwise, z^B pixels (mobile_composite, the previous default)',
              lambda m: MobileComposite(*_bounds(m)), 'full'),
    'zplus_spread': ('as zplus, SpreadZBox at the pixels', _mobile_epsilon(top=2.0), 'screen'),
    'zplus_dw_wsquare': ('as zplus, w^2 on depthwise', lambda m: MobileComposite(*_bounds(m), depthwise='wsquare'),
                         'screen'),
    'epsilon_plus': ("Zennit's EpsilonPlus (z+, biases zeroed)", _zennit('EpsilonPlus', zero_params=['bias']),
                     'single'),
    'epsilon_gamma_box': ("Zennit's EpsilonGammaBox (gamma 0.25, biases kept)", _zennit('EpsilonGammaBox', gamma=0.25),
                          'single'),
    'gamma_schedule': ('DepthGamma schedule 0.5 -> 0, z^B pixels, biases zeroed',
                       lambda m: DepthGamma(first='zbox', low=_bounds(m)[0], high=_bounds(m)[1], zero_params=['bias'],
                                            canonizers=canonizers_for(m)), 'single'),
    'gamma_schedule_bias': ('DepthGamma schedule 0.5 -> 0, z^B pixels, biases kept',
                            lambda m: DepthGamma(first='zbox', low=_bounds(m)[0], high=_bounds(m)[1],
                                                 canonizers=canonizers_for(m)), 'subset'),
    'gamma_0.25_bias': ('DepthGamma fixed gamma 0.25, z^B pixels, biases kept',
                        lambda m: DepthGamma(gammas=(0.25,), first='zbox', low=_bounds(m)[0], high=_bounds(m)[1],
                                             canonizers=canonizers_for(m)), 'subset'),
    'top0.75_eps0.25': ('MobileEpsilon top 0.75, epsilon 0.25', _mobile_epsilon(top=0.75, epsilon=0.25), 'screen'),
    'top0.75_eps0.1': ('MobileEpsilon top 0.75, epsilon 0.1', _mobile_epsilon(top=0.75, epsilon=0.1), 'screen'),
    'top0.75_eps0.03': ('MobileEpsilon top 0.75, epsilon 0.03', _mobile_epsilon(top=0.75, epsilon=0.03), 'full'),
    'top0.75_eps0.01': ('MobileEpsilon top 0.75, epsilon 0.01', _mobile_epsilon(top=0.75, epsilon=0.01), 'full'),
    'top0.75_eps0.03_nobias': ('MobileEpsilon top 0.75, epsilon 0.03, top biases zeroed',
                               _mobile_epsilon(top=0.75, epsilon=0.03, top_bias=False), 'screen'),
    'top0.02_eps0.03': ('MobileEpsilon, epsilon 0.03 in every layer above the pixels',
                        _mobile_epsilon(top=0.02, epsilon=0.03), 'screen'),
    'top0.3_eps0.03': ('MobileEpsilon top 0.3, epsilon 0.03', _mobile_epsilon(top=0.3, epsilon=0.03), 'full'),
    'top0.4_eps0.03': ('MobileEpsilon top 0.4, epsilon 0.03', _mobile_epsilon(top=0.4, epsilon=0.03), 'full'),
    'top0.4_eps0.01': ('MobileEpsilon top 0.4, epsilon 0.01', _mobile_epsilon(top=0.4, epsilon=0.01), 'full'),
    'top0.4_eps0.1': ('MobileEpsilon top 0.4, epsilon 0.1', _mobile_epsilon(top=0.4, epsilon=0.1), 'full'),
    'top0.5_eps0.03': ('MobileEpsilon top 0.5, epsilon 0.03', _mobile_epsilon(top=0.5, epsilon=0.03), 'full'),
    'top0.6_eps0.03': ('MobileEpsilon top 0.6, epsilon 0.03', _mobile_epsilon(top=0.6, epsilon=0.03), 'full'),
    'top0.6_eps0.01': ('MobileEpsilon top 0.6, epsilon 0.01', _mobile_epsilon(top=0.6, epsilon=0.01), 'screen'),
    'top0.9_eps0.03': ('MobileEpsilon top 0.9, epsilon 0.03', _mobile_epsilon(top=0.9, epsilon=0.03), 'screen'),
    'top1.0_eps0.03': ('MobileEpsilon, epsilon 0.03 on the head only', _mobile_epsilon(top=1.0, epsilon=0.03),
                       'screen'),
}


#: the candidates of the documented run (README, docs/howto/choosing_rules.rst): every family, and the epsilon depth
#: and size around the default; the others in CANDIDATES (the gamma schedule without biases, whose relevance explodes
#: and falls back to 1280 passes a pair, and more top-0.75/0.6/0.9 neighbours) run with --candidates
STUDY_CANDIDATES = ('zplus', 'zplus_spread', 'zplus_dw_wsquare', 'epsilon_plus', 'epsilon_gamma_box',
                    'gamma_schedule_bias', 'gamma_0.25_bias', 'top0.75_eps0.03', 'top0.75_eps0.01',
                    'top0.75_eps0.03_nobias', 'top0.02_eps0.03', 'top0.3_eps0.03', 'top0.4_eps0.03', 'top0.4_eps0.01',
                    'top0.4_eps0.1', 'top0.5_eps0.03', 'top0.6_eps0.03', 'top1.0_eps0.03')


def default_candidate(model) -> str:
    """The candidate whose rules :func:`~zennit_bilrp.lrp.choose.composite_for` ``(model, 'imagenet')`` picks (the
    default), found by comparing the composites' type and settings; ``''`` if none matches."""
    def key(composite):
        settings = {name: getattr(composite, name, None) for name in ('top', 'spread', 'depthwise', 'top_bias')}
        epsilon = getattr(getattr(composite, 'top_epsilon', None), 'epsilon', None)
        return type(composite).__name__, tuple(sorted(settings.items())), epsilon

    chosen = key(composite_for(model, 'imagenet'))
    return next((name for name, (_, factory, _) in CANDIDATES.items() if key(factory(model)) == chosen), '')


#: baselines of benchmarks/correspondence.py shown in the table
BASELINES = ('hessian_product', 'integrated_jac')
CONTROLS = ('oracle', 'random')


def marginal_maps(model, composite, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """BiLRP marginals of the cosine of one pair at input resolution (channels summed), ``(2, H, W)``: one LRP pass
    of :math:`\\phi(x) \\odot \\phi(x') / (|\\phi(x)| |\\phi(x')|)` per side (the norms held constant)."""
    with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
        emb = bilrp.embed(torch.cat([x_a, x_b]))
        scale = emb.norm(dim=1).prod()
        _, rel_a = bilrp.propagate(x_a, (emb[1] / scale)[None, None])
        _, rel_b = bilrp.propagate(x_b, (emb[0] / scale)[None, None])
    return torch.cat([rel_a[0], rel_b[0]]).detach().reshape(2, *x_a.shape[-2:])


def grid_energies(model, name: str, factory: Callable, pairs, preprocess, cache: Path, periods=(2, 4, 8)) -> dict:
    """Stride-grid energy of the candidate's marginals on ``pairs`` (mean over both images), cached as NPZ."""
    values = {p: [] for p in periods}
    for index, pair in enumerate(pairs):
        path = cache / 'marginals' / name / f'{index:03d}.npz'
        if path.is_file():
            maps = torch.from_numpy(np.load(path)['maps'])
        else:
            maps = marginal_maps(model, factory(model), preprocess(pair.x_a), preprocess(pair.x_b))
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, maps=maps.numpy())
        for period in periods:
            values[period].append(float(stride_grid_energy(maps, period).mean()))
    return {f'grid{p}': float(np.mean(v)) for p, v in values.items()}


def plot_examples(model, pair, preprocess, candidates: dict, path: Path, patch: int = 32, k: int = 10) -> None:
    """One pair explained by each candidate: the top-``k`` patch pairs as lines and the exact marginals."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from zennit_bilrp.analysis.correspondence import correspondence_scores, patch_truth
    from zennit_bilrp.app.viz import plot_bilrp_stack

    truth = patch_truth(pair, patch)
    items = []
    for name, factory in candidates.items():
        with BiLRP(model, composite=factory(model), similarity='cosine') as bilrp:
            result = bilrp(preprocess(pair.x_a), preprocess(pair.x_b), pooling=patch)
        scores = correspondence_scores(result.relevance[0].double(), truth, k)
        items.append((result, pair.x_a, pair.x_b,
                      f'{name} on {pair.name}: top-{k} pointing {scores["pointing"]:.2f}, error '
                      f'{scores["error_px"]:.0f} px, y = {float(result.similarity[0]):.3f}, '
                      f'sum R = {float(result.relevance.sum()):.3f}'))
    fig = plot_bilrp_stack(items, k=k, by='value', width=7.0)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def controlled_timing(model, pairs, preprocess, methods: dict, patches=(32, 16), repeats: int = 1) -> dict:
    """Seconds per pair of ``methods`` measured in one process, interleaved pair by pair (so that they share the
    machine's load), after one warm-up call each: the median over pairs and repeats, per patch size."""
    times = {patch: {name: [] for name in methods} for patch in patches}
    first = pairs[0]
    for method in methods.values():
        method(preprocess(first.x_a), preprocess(first.x_b), max(patches))
    for pair in tqdm(pairs, desc='timing'):
        x_a, x_b = preprocess(pair.x_a), preprocess(pair.x_b)
        for patch in patches:
            for _ in range(repeats):
                for name, method in methods.items():
                    start = time.perf_counter()
                    method(x_a, x_b, patch)
                    times[patch][name].append(time.perf_counter() - start)
    return {str(patch): {name: float(np.median(values)) for name, values in by_name.items()}
            for patch, by_name in times.items()}


def random_lite0(size: tuple, seed: int = 0) -> torch.nn.Module:
    """A randomly initialized EfficientNet-Lite0 embedding whose BatchNorm statistics come from random inputs (with
    the initial statistics its activations vanish within a few blocks), for tests of this script."""
    from zennit_bilrp.models.pretrained import load_pretrained_encoder

    model = load_pretrained_encoder(pretrained=False, seed=seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, *size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _fmt(value, spec='{:.3f}') -> str:
    return '-' if value is None or (isinstance(value, float) and not math.isfinite(value)) else spec.format(value)


TABLE = (('method', 'method', None), ('pairs', 'pairs', '{}'), ('pointing 32 ↑', 'pointing_32', '{:.3f}'),
         ('pointing 16 ↑', 'pointing_16', '{:.3f}'), ('pointing 32, subset ↑', 'pointing_32_subset', '{:.3f}'),
         ('error 32 px ↓', 'error_px_32', '{:.1f}'), ('gain over own outer product 32', 'pointing_gain_32', '{:+.3f}'),
         ('top singular share 32 ↓', 'singular_share_32', '{:.3f}'), ('sum R / y', 'conservation', '{:.3f}'),
         ('max abs(sum R) / abs(y)', 'amplification', '{:.3g}'), ('grid 2', 'grid2', '{:.3f}'),
         ('s / pair', 'seconds', '{:.1f}'), ('at px', 'seconds_patch', '{}'))


def table_rows(summary: list, grids: dict, rows: list) -> list:
    """One row per method: the 32- and 16-px scores side by side, amplification over pairs, the grid energy."""
    out = {}
    for entry in summary:
        row = out.setdefault(entry['method'], {'method': entry['method'], 'pairs': entry['pairs']})
        patch = entry['patch']
        for key in ('pointing', 'error_px', 'pointing_gain', 'singular_share', 'chance'):
            if key in entry:
                row[f'{key}_{patch}'] = entry[key]
                row[f'{key}_{patch}_se'] = entry.get(f'{key}_se')
        if 'conservation' in entry and patch == 32:
            row['conservation'] = entry['conservation']
        if 'seconds' in entry and patch <= row.get('seconds_patch', patch):  # the run at the finest patch size
            row['seconds'], row['seconds_patch'] = entry['seconds'], patch
        row['pairs'] = max(row['pairs'], entry['pairs'])
    for method, row in out.items():
        ratios = [abs(r['conservation']) for r in rows if r['method'] == method and 'conservation' in r]
        if ratios:
            row['amplification'] = float(max(ratios))
        row.update(grids.get(method, {}))
    return list(out.values())


def markdown(rows: list, descriptions: dict) -> str:
    lines = ['| ' + ' | '.join(head for head, _, _ in TABLE) + ' |', '|' + '---|' * len(TABLE)]
    for row in rows:
        cells = []
        for _, key, spec in TABLE:
            value = row.get(key)
            cells.append(str(value) if spec is None else _fmt(value, spec))
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'Candidates:', '']
    lines += [f'- `{name}`: {text}' for name, text in descriptions.items()]
    return '\n'.join(lines) + '\n'


def write_csv(path: Path, rows: list, columns: list) -> None:
    with open(path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, '') for key in columns})


def plot_scores(rows: list, path: Path, baselines: dict, chance: dict) -> None:
    """Pointing (32 and 16 px), error, top singular share and conservation of every method; each label gives the
    number of pairs, the default is marked. (Seconds are left out: the cached runs were timed under different loads;
    the controlled timing is in the table's text.)"""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    methods = [r for r in rows if r['method'] not in CONTROLS]
    names = [f"{'* ' if r.get('default') else ''}{r['method']} ({r['pairs']})" for r in methods]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(18, 0.32 * len(names) + 3.0), sharey=True)
    for offset, patch, color in ((-0.2, 32, 'tab:blue'), (0.2, 16, 'tab:orange')):
        values = [r.get(f'pointing_{patch}', np.nan) for r in methods]
        errors = [r.get(f'pointing_{patch}_se') or 0.0 for r in methods]
        axes[0].barh(y + offset, values, 0.4, xerr=errors, color=color, label=f'{patch}-px patches', capsize=2)
        if patch in chance:
            axes[0].axvline(chance[patch], color=color, ls=':', lw=1.2, label=f'chance ({patch} px)')
    for name, color in baselines.items():
        row = next((r for r in rows if r['method'] == name), None)
        if row and 'pointing_32' in row:
            axes[0].axvline(row['pointing_32'], color=color, ls='--', lw=1, label=f'{name} (32 px)')
    axes[0].set_title('top-10 pointing at the true match ↑')
    axes[0].legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.05), ncol=2)
    axes[1].barh(y, [r.get('error_px_32', np.nan) for r in methods], color='tab:blue')
    axes[1].set_title('error of the top-10 pairs, 32 px (px) ↓')
    axes[2].barh(y, [r.get('singular_share_32', np.nan) for r in methods], color='tab:green')
    axes[2].axvline(0.5, color='k', ls='--', lw=1, label='target 0.5')
    axes[2].set_xlim(0, 1)
    axes[2].set_title('top singular share of F (32 px) ↓')
    axes[2].legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.05))
    conservation = np.array([r.get('conservation', np.nan) for r in methods], dtype=float)
    axes[3].barh(y, np.clip(conservation, -0.1, 1.5), color='tab:gray')
    for i, value in enumerate(conservation):
        if np.isfinite(value) and not -0.1 <= value <= 1.5:
            axes[3].text(1.5, i, f' {value:.3g} (clipped)', va='center', fontsize=7)
    axes[3].axvline(1.0, color='k', ls='--', lw=1)
    axes[3].set_xlim(-0.1, 2.1)
    axes[3].set_title('sum R / y (1: conserves)')
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    for axis in axes:
        axis.grid(axis='x', alpha=0.3)
    fig.suptitle('BiLRP rules on the pretrained EfficientNet-Lite0 (cosine), correspondence benchmark; '
                 '(n): pairs, *: the default', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grid(model, pair, preprocess, candidates: dict, path: Path) -> None:
    """The marginal of the first image under each candidate, whole and a 32 x 48 px zoom, with its grid energy."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(candidates) + 1, figsize=(3.6 * (len(candidates) + 1), 5.2))
    axes[0, 0].imshow(pair.x_a[0].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0, 0].set_title(pair.name, fontsize=9)
    height, width = pair.x_a.shape[-2:]
    top, left = height // 2 - 16, width // 2 - 24
    axes[1, 0].imshow(pair.x_a[0, :, top:top + 32, left:left + 48].permute(1, 2, 0).clamp(0, 1).numpy(),
                      interpolation='nearest')
    axes[1, 0].set_title('zoom (32 x 48 px)', fontsize=9)
    for column, (name, factory) in enumerate(candidates.items(), start=1):
        heat = marginal_maps(model, factory(model), preprocess(pair.x_a), preprocess(pair.x_b))[0]
        energy = float(stride_grid_energy(heat, 2))
        for row, view in enumerate((heat, heat[top:top + 32, left:left + 48])):
            limit = float(view.abs().max()) or 1.0
            axes[row, column].imshow(view.numpy(), cmap='bwr', vmin=-limit, vmax=limit, interpolation='nearest')
        axes[0, column].set_title(f'{name}\nperiod-2 energy {energy:.3f}', fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle('BiLRP marginal (red: positive, blue: negative) and its stride grid', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: rules compared on plain CNNs (no depthwise convolutions): name -> (description, factory(model, bounds))
CNN_CANDIDATES: dict = {
    'depth_gamma': ('DepthGamma 0.5 -> 0, z^B pixels, biases zeroed',
                    lambda m, b: DepthGamma(first='zbox', low=b[0], high=b[1], zero_params=['bias'],
                                            canonizers=canonizers_for(m))),
    'depth_gamma_bias': ('DepthGamma 0.5 -> 0, z^B pixels, biases kept',
                         lambda m, b: DepthGamma(first='zbox', low=b[0], high=b[1], canonizers=canonizers_for(m))),
    'epsilon_plus': ("Zennit's EpsilonPlus (z+), biases zeroed",
                     lambda m, b: __import__('zennit.composites', fromlist=['EpsilonPlus']).EpsilonPlus(
                         zero_params=['bias'], canonizers=canonizers_for(m))),
    'layered_top0.75': ('SpreadZBox pixels, z+ below, relative LRP-epsilon 0.03 with biases from depth 0.75 '
                        "(MobileEpsilon's rules)", lambda m, b: MobileEpsilon(b[0], b[1], top=0.75, epsilon=0.03)),
    'layered_top0.5': ('as layered_top0.75 from depth 0.5', lambda m, b: MobileEpsilon(b[0], b[1], top=0.5,
                                                                                       epsilon=0.03)),
}


def cnn_study(out: Path, pairs_count: int, synthetic_pairs: int, size: tuple) -> dict:
    """The CNN candidates on the two shipped CNNs with ground truth: the object-keyed synthetic SmallResNet
    (BatchNorm, residual sums; dot product) on synthetic object pairs (pointing game: top-10 patch pairs inside
    both objects, 4-px patches), and the demo encoder (bias-free ResNet-style, max pooling; cosine) on the
    correspondence pairs. Which of them composite_for picks is marked. Writes cnn_table.md and cnn_summary.json."""
    from zennit_bilrp.analysis.evaluation import pointing_chance, pointing_game
    from zennit_bilrp.core.pooling import Pooling
    from zennit_bilrp.models.demo import load_demo_model
    from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_pairs

    def picked(model, bounds):
        chosen = composite_for(model, bounds)
        for name, (_, factory) in CNN_CANDIDATES.items():
            candidate = factory(model, resolve(bounds, model))
            if type(candidate) is type(chosen) and all(getattr(candidate, key, None) == getattr(chosen, key, None)
                                                       for key in ('gammas', 'first', 'zero_params', 'top')):
                return name
        return ''

    def resolve(bounds, model):
        from zennit_bilrp.lrp.choose import resolve_bounds

        return resolve_bounds(bounds, next(model.parameters()).dtype)

    results = {'synthetic_resnet': [], 'demo_encoder': []}
    resnet = load_synthetic_encoder('object')
    synthetic = make_pairs(synthetic_pairs, size=32, seed=123, n_objects=6, n_backgrounds=6)
    grid = Pooling.ensure(4).resolve(synthetic.x_a.shape[1:])
    chance = float(pointing_chance(synthetic.mask_a, synthetic.mask_b, grid, grid).mean())
    for name, (text, factory) in tqdm(CNN_CANDIDATES.items(), desc='synthetic SmallResNet'):
        start = time.perf_counter()
        with BiLRP(resnet, composite=factory(resnet, resolve('unit', resnet)), similarity='dot') as bilrp:
            result = bilrp(synthetic.x_a, synthetic.x_b, pooling=4, marginals=False)
        seconds = (time.perf_counter() - start) / synthetic_pairs
        ratio = result.relevance.sum(dim=(1, 2)) / result.similarity
        results['synthetic_resnet'].append({
            'method': name, 'pairs': synthetic_pairs, 'description': text, 'chance': chance,
            'pointing': float(pointing_game(result.relevance, synthetic.mask_a, synthetic.mask_b, grid, grid).mean()),
            'conservation': float(ratio.mean()), 'amplification': float(ratio.abs().max()), 'seconds': seconds})
    demo = load_demo_model()
    pairs = correspondence_pairs(tuple(size), count=pairs_count)
    methods = {name: bilrp_method(demo, lambda m, f=factory: f(m, resolve('unit', m)))
               for name, (_, factory) in CNN_CANDIDATES.items()}
    rows = evaluate(methods, pairs, (32, 16), controls=('random',), cache=out / 'cache' / 'demo_encoder')
    for entry in summarize(rows):
        ratios = [abs(r['conservation']) for r in rows if r['method'] == entry['method'] and 'conservation' in r]
        entry['amplification'] = float(max(ratios)) if ratios else None
        results['demo_encoder'].append(entry)
    results['default'] = {'synthetic_resnet': picked(resnet, 'unit'), 'demo_encoder': picked(demo, 'unit')}
    lines = [f"**Synthetic SmallResNet** ({synthetic_pairs} object pairs, 32 x 32, 4-px patches, dot product; "
             f'pointing game chance {chance:.3f}; composite_for picks `{results["default"]["synthetic_resnet"]}`)', '',
             '| rules | pointing game ↑ | sum R / y | max abs(sum R) / abs(y) | s / pair |', '|---|---|---|---|---|']
    for r in results['synthetic_resnet']:
        lines.append(f"| {r['method']} | {r['pointing']:.3f} | {r['conservation']:.3f} | {r['amplification']:.3g} | "
                     f"{r['seconds']:.3f} |")
    lines += ['', f'**Demo encoder** ({pairs_count} correspondence pairs, {size[0]} x {size[1]}, cosine; '
              f'composite_for picks `{results["default"]["demo_encoder"]}`)', '',
              '| rules | patch | pointing ↑ | error px ↓ | gain over own outer product | top singular share | '
              'sum R / y | max abs(sum R) / abs(y) |', '|---|---|---|---|---|---|---|---|']
    for r in results['demo_encoder']:
        lines.append(f"| {r['method']} | {r['patch']} | {_fmt(r.get('pointing'))} | {_fmt(r.get('error_px'), '{:.1f}')}"
                     f" | {_fmt(r.get('pointing_gain'), '{:+.3f}')} | {_fmt(r.get('singular_share'))} | "
                     f"{_fmt(r.get('conservation'))} | {_fmt(r.get('amplification'), '{:.3g}')} |")
    lines += ['', 'Rules:', ''] + [f'- `{name}`: {text}' for name, (text, _) in CNN_CANDIDATES.items()]
    (out / 'cnn_table.md').write_text('\n'.join(lines) + '\n')
    (out / 'cnn_summary.json').write_text(json.dumps(results, indent=1))
    print('\n'.join(lines))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('benchmarks/results/rules_study'))
    parser.add_argument('--size', type=int, nargs=2, default=(128, 192), metavar=('H', 'W'))
    parser.add_argument('--pairs', type=int, default=25)
    parser.add_argument('--candidates', nargs='+', default=None,
                        help=f'default: the documented study {list(STUDY_CANDIDATES)}; any of {list(CANDIDATES)}')
    parser.add_argument('--full', nargs='*', default=None,
                        help="candidates run at 32- and 16-px patches (default: those of tier 'full')")
    parser.add_argument('--baselines', nargs='*', default=list(BASELINES))
    parser.add_argument('--ij-steps', type=int, default=8)
    parser.add_argument('--subset-pairs', type=int, default=9,
                        help='pairs (spread over the set) for integrated Jacobians')
    parser.add_argument('--zennit-pairs', type=int, default=3,
                        help="pairs (spread over the set) for the 'subset' candidates (gamma rules, slow here)")
    parser.add_argument('--reuse-cache', type=Path, default=None,
                        help="copy the baselines' cached results from this benchmarks/correspondence.py cache folder")
    parser.add_argument('--grid-pairs', type=int, default=4, help='pairs for the stride-grid energy')
    parser.add_argument('--size224', type=int, default=0, help='also run default/zplus at 224 x 224 on N pairs')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--no-report', action='store_true', help='compute (and cache) only')
    parser.add_argument('--cnn', action='store_true',
                        help='run the plain-CNN comparison (synthetic SmallResNet, demo encoder) instead')
    parser.add_argument('--synthetic-pairs', type=int, default=16)
    parser.add_argument('--timing', type=int, default=0,
                        help='time the default, the Hessian product and integrated Jacobians on N pairs in one process')
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--force', action='store_true', help='delete the cache first')
    parser.add_argument('--model', choices=('lite0', 'random'), default='lite0',
                        help="'random': a randomly initialized Lite0 (for tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out, cache = args.out, args.out / 'cache'
    if args.force and cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.cnn:
        cnn_study(out, args.pairs, args.synthetic_pairs, tuple(args.size))
        return 0
    bench = _load_benchmark()
    from zennit_bilrp.models.pretrained import imagenet_normalize, load_pretrained_encoder

    model = load_pretrained_encoder() if args.model == 'lite0' else random_lite0(tuple(args.size))
    preprocess = imagenet_normalize
    names = list(args.candidates or STUDY_CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f'unknown candidates {unknown}; choose from {list(CANDIDATES)}')
    tiers = {n: CANDIDATES[n][2] for n in names}
    if args.full is not None:
        tiers.update({n: 'full' for n in args.full})
    pairs = correspondence_pairs(tuple(args.size), count=args.pairs)
    if args.reuse_cache is not None:
        for name in args.baselines:
            source = args.reuse_cache / name
            for path in sorted(source.glob('*.npz')) if source.is_dir() else []:
                target = cache / name / path.name
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
    baselines = bench.baseline_methods(model, 'cosine', ij_steps=args.ij_steps)
    subset = bench.subset_indices(args.subset_pairs, len(pairs))
    zennit_subset = bench.subset_indices(args.zennit_pairs, len(pairs))

    def bilrp(tier):
        return {f'bilrp_{n}': bilrp_method(model, CANDIDATES[n][1]) for n in names if tiers[n] == tier}

    groups = [(bilrp('full'), (32, 16), CONTROLS, None), (bilrp('screen'), (32,), (), None),
              (bilrp('subset'), (32,), (), zennit_subset), (bilrp('single'), (32,), (), [0]),
              ({b: baselines[b] for b in args.baselines}, (32, 16), (), None)]
    rows = []
    for methods, patches, controls, only in groups:
        if methods or controls:
            limited = {name: only for name in methods} if only is not None else {}
            if 'integrated_jac' in methods:
                limited['integrated_jac'] = subset
            rows.extend(evaluate(methods, pairs, patches, preprocess=preprocess, controls=controls, cache=cache,
                                 subsets=limited))
    grids = {}
    for name in tqdm(names, desc='stride grid'):
        grids[f'bilrp_{name}'] = grid_energies(model, name, CANDIDATES[name][1], pairs[:args.grid_pairs], preprocess,
                                               cache)
    default = default_candidate(model)
    rows224 = []
    if args.size224:
        pairs224 = correspondence_pairs((224, 224), count=args.size224)
        methods224 = {f'bilrp_{n}_224': bilrp_method(model, CANDIDATES[n][1]) for n in dict.fromkeys(
            [default, 'zplus']) if n in CANDIDATES}
        methods224['hessian_product_224'] = baselines['hessian_product']
        rows224 = evaluate(methods224, pairs224, (32,), preprocess=preprocess, controls=(), cache=cache)
    timing = None
    if args.timing:
        path = out / 'timing.json'
        if path.is_file():
            timing = json.loads(path.read_text())
        else:
            timed = {f'bilrp_{default}': bilrp_method(model, CANDIDATES[default][1]),
                     'hessian_product': baselines['hessian_product'], 'integrated_jac': baselines['integrated_jac']}
            timing = {'pairs': [p.name for p in pairs[:args.timing]], 'threads': args.threads,
                      'ij_steps': args.ij_steps, 'seconds': controlled_timing(model, pairs[:args.timing], preprocess,
                                                                              timed)}
            path.write_text(json.dumps(timing, indent=1))
    if args.no_report:
        print(f'cached {len(rows) + len(rows224)} rows in {time.perf_counter() - start:.0f} s')
        return 0
    all_rows = rows + rows224
    summary = summarize(all_rows)
    table = table_rows(summary, grids, all_rows)
    for row in table:  # every method on the same pairs: the subset (where integrated Jacobians ran)
        for patch in (32, 16):
            values = [r['pointing'] for r in rows if r['method'] == row['method'] and r['patch'] == patch
                      and r['index'] in subset]
            if len(values) == len(subset):
                row[f'pointing_{patch}_subset'] = float(np.mean(values))
    chance = {p: float(np.mean([r['chance'] for r in rows if r['patch'] == p and 'chance' in r])) for p in (32, 16)}
    order = [f'bilrp_{n}' for n in names] + [m for m in dict.fromkeys(r['method'] for r in rows224)] + list(
        args.baselines) + list(CONTROLS)
    table.sort(key=lambda r: order.index(r['method']) if r['method'] in order else len(order))
    notes = {'full': '', 'screen': ' (32-px patches only)',
             'subset': f' (32-px patches, {len(zennit_subset)} pairs: {zennit_subset})',
             'single': ' (32-px patches, the stereo pair only)'}
    descriptions = {f'bilrp_{n}': CANDIDATES[n][0] + notes[tiers[n]] + (' **the default**' if n == default else '')
                    for n in names}
    descriptions.update({
        'hessian_product': 'x x\' d2y/dxdx\' (forward-mode, benchmarks/correspondence.py)',
        'integrated_jac': f'integrated Jacobians, {args.ij_steps} Gauss-Legendre steps, mean-colour references, '
                          f'on {len(subset)} pairs',
        'oracle': 'the true correspondence as relevance', 'random': 'Gaussian noise'})
    for method in dict.fromkeys(r['method'] for r in rows224):
        descriptions[method] = f'{method[:-4]} at 224 x 224 px (32-px patches, {args.size224} pairs)'
    for row in table:
        if row['method'] == f'bilrp_{default}':
            row['default'] = True
    out.mkdir(parents=True, exist_ok=True)
    columns = ['method', 'pair', 'kind', 'index', 'patch', 'k', 'valid', 'pointing', 'chance', 'error_px',
               'pointing_outer', 'pointing_gain', 'singular_share', 'conservation', 'similarity', 'seconds']
    write_csv(out / 'per_pair.csv', all_rows, columns)
    keys = ['method', 'pairs'] + [key for _, key, _ in TABLE[2:]]
    write_csv(out / 'summary.csv', table, keys)
    timing_text = ''
    if timing:
        timing_text = '\nControlled timing (one process, interleaved, median s / pair over ' + \
            f"{len(timing['pairs'])} pairs, {timing['threads']} thread(s)): " + '; '.join(
                f'{patch} px: ' + ', '.join(f'{name} {value:.1f}' for name, value in seconds.items())
                for patch, seconds in timing['seconds'].items()) + '.\n'
    text = markdown(table, descriptions) + timing_text + (
        '\nThe s / pair column is each candidate\'s own cached run, timed under whatever load the machine had then '
        '(runs were split over sessions and parallel jobs); compare times only in the controlled timing.\n') + (
        f'\nSubset: pair indices {subset} (integrated Jacobians and the subset candidates ran on these). '
        f'Chance pointing: {chance[32]:.3f} (32 px), {chance[16]:.3f} (16 px).\n')
    (out / 'table.md').write_text(text)
    ij = next((r for r in table if r['method'] == 'integrated_jac'), None)
    chosen = next((r for r in table if r['method'] == f'bilrp_{default}'), None)
    best = {p: max((r.get(f'pointing_{p}', -1) for r in table if r['method'] in args.baselines), default=None)
            for p in (32, 16)}
    best['32_subset'] = max((r.get('pointing_32_subset', -1) for r in table if r['method'] in args.baselines),
                            default=None)
    targets = {}
    if chosen:
        targets = {
            'default': default,
            'pointing_at_least_best_baseline_32': chosen.get('pointing_32', -1) >= (best[32] or 0),
            'pointing_at_least_best_baseline_16': chosen.get('pointing_16', -1) >= (best[16] or 0),
            'pointing_at_least_best_baseline_32_on_subset': chosen.get('pointing_32_subset', -1) >= (
                best['32_subset'] or 0),
            'top_singular_share_at_most_0.5': chosen.get('singular_share_32', 1) <= 0.5,
            'better_than_own_outer_product': chosen.get('pointing_gain_32', 0) > 0,
            'time_ratio_to_integrated_jacobians': (chosen['seconds'] / ij['seconds']
                                                   if ij and 'seconds' in chosen and 'seconds' in ij else None),
        }
        if timing:
            for patch, seconds in timing['seconds'].items():
                ratio = seconds[f'bilrp_{default}'] / seconds['integrated_jac']
                targets[f'time_ratio_to_integrated_jacobians_controlled_{patch}'] = ratio
                targets[f'time_at_most_1/20_of_integrated_jacobians_{patch}'] = ratio <= 0.05
    report = {'settings': {'size': list(args.size), 'pairs': len(pairs), 'pair_names': [p.name for p in pairs],
                           'candidates': names, 'tiers': tiers, 'baselines': args.baselines,
                           'ij_steps': args.ij_steps, 'subset': subset, 'zennit_subset': zennit_subset,
                           'grid_pairs': args.grid_pairs,
                           'size224_pairs': args.size224, 'threads': args.threads, 'k': 10,
                           'versions': package_versions()},
              'table': table, 'targets': targets, 'best_baseline_pointing': best, 'chance': chance, 'timing': timing,
              'descriptions': descriptions, 'wall_seconds': time.perf_counter() - start}
    (out / 'summary.json').write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        plot_scores(table, out / 'rules_study.png', {'hessian_product': 'tab:red', 'integrated_jac': 'tab:purple'},
                    chance)
        shown = {n: CANDIDATES[n][1] for n in dict.fromkeys(('zplus', 'zplus_spread', default)) if n in CANDIDATES}
        plot_grid(model, pairs[min(2, len(pairs) - 1)], preprocess, shown, out / 'stride_grid.png')
        plot_examples(model, pairs[0], preprocess, {n: CANDIDATES[n][1] for n in dict.fromkeys(('zplus', default))
                                                    if n in CANDIDATES}, out / 'example_pairs.png')
    print(text)
    print(json.dumps(targets, indent=1))
    print(f'wrote {out} in {time.perf_counter() - start:.0f} s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
