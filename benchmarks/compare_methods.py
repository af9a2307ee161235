"""Compare pairwise explanation methods for a similarity model: BiLRP against what a Captum user would build.

Methods (all return pooled patch-pair relevance):
  bilrp_depth_gamma  BiLRP, exact, the dataset's DepthGamma composite (bilrp_composite(): the paper's gamma schedule
                   by relative depth; demo_composite() on the demo model)
  bilrp_mobile     BiLRP, exact, the pretrained network's default rules (pretrained_composite() = composite_for():
                   MobileEpsilon, z^B pixels, z+ below, relative LRP-epsilon in the top layers; the lite0 datasets only)
  bilrp_eplus      BiLRP, exact, Zennit's EpsilonPlus (z+ in convolutions, epsilon in dense layers), biases zeroed
  bilrp_epsilon    BiLRP, exact, epsilon rule everywhere (engine)
  captum_lrp       BiLRP assembled from captum.attr.LRP, one call per unit (epsilon rule; same rules as above)
  saliency_outer   outer product of Captum Saliency marginals
  ixg_outer        outer product of Captum InputXGradient marginals
  ig_outer         outer product of Captum IntegratedGradients marginals
  hessian_product  second-order Taylor term x x' d2y/dxdx' (torch.autograd)
  integrated_jac   integrated Jacobians (straight paths from per-channel mean images)
  random           Gaussian noise (the floor)

Datasets:
  synthetic  pairs showing the same object on different backgrounds (zennit_bilrp.models.synthetic) with exact masks;
             encoder: a small bias-free CNN that Captum's LRP supports, trained here (~30 s) on object
             classification (cached in --out), compared with the dot product. Pointing game + flipping.
  synthetic_resnet  the same pairs explained on the object-keyed SmallResNet that zennit_bilrp.models.synthetic ships
             (BatchNorm, skip connections: Captum's LRP does not support it, which the table reports).
  photos     scikit-image photos (stereo motorcycle pair, astronaut vs a mirrored crop, chelsea vs a shifted crop,
             coffee vs a shifted crop); the demo model when its weights are shipped, else the synthetic encoder.
             Patch flipping only (no ground truth).
  lite0      the pretrained ImageNet EfficientNet-Lite0 (zennit_bilrp.models.pretrained, 1280-d, cosine; needs the
             ``pretrained`` extra) on photo pairs at 96x128 (patches 32x32): the stereo pair, the astronaut vs a
             zoomed mirrored crop, chelsea vs its mirror image. Flipping, and on the stereo pair a correspondence
             score from the ground-truth disparity (share of the top-k pairs whose right patch holds the true match
             of the left patch centre; mean distance of the matched centres from it, in pixels). Opt in with
             ``--datasets lite0`` (minutes per method on a CPU).

Scores: pointing game (share of the top-k pairs joining the two objects; higher is better), pairwise patch
flipping AUC (similarity after removing the most relevant patch pairs first, relative to the start; lower is
better), the same for a random order, marginal (per-input) flipping AUC, time and peak memory per pair.

Run:  python benchmarks/compare_methods.py --out out/compare_methods
Lite0: python benchmarks/compare_methods.py --datasets lite0 --repeats 0 --ij-steps 4
Fast: python benchmarks/compare_methods.py --pairs 4 --photos 2
Torchvision: python benchmarks/compare_methods.py --model torchvision:resnet18 --weights resnet18.pth
Results are cached per (dataset, method) under --out/results (delete them or pass --force to recompute).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zennit_bilrp import BiLRP, Pooling, bilrp_composite, canonizers_for
from zennit_bilrp.analysis.evaluation import (
    flipping_auc,
    marginal_patch_flipping,
    measure,
    pair_order,
    pairwise_patch_flipping,
    pointing_chance,
    pointing_game,
    random_pair_order,
)
from zennit_bilrp.interop.baselines import (
    hessian_product,
    integrated_jacobian_exactness,
    integrated_jacobians,
    marginal_outer_product,
    pair_similarity,
    random_pairs,
)
from zennit_bilrp.interop.captum_lrp import captum_bilrp, zennit_epsilon_composite
from zennit_bilrp.models.synthetic import make_images, make_pairs

METHODS = ('bilrp_depth_gamma', 'bilrp_mobile', 'bilrp_eplus', 'bilrp_epsilon', 'captum_lrp', 'saliency_outer',
           'ixg_outer', 'ig_outer', 'hessian_product', 'integrated_jac', 'random')
#: methods of the lite0 dataset: BiLRP with the rules that conserve on it, against the gradient baselines (the
#: epsilon/EpsilonPlus/DepthGamma rows are not conservative on Lite0, Captum's LRP does not support its layers)
LITE0_METHODS = ('bilrp_mobile', 'saliency_outer', 'ixg_outer', 'ig_outer', 'hessian_product', 'integrated_jac',
                 'random')
DATASETS = ('synthetic', 'synthetic_resnet', 'photos', 'lite0', 'lite0_synthetic')
#: (height, width) and patch size of the lite0 dataset
LITE0_SIZE, LITE0_PATCH = (96, 128), 32
#: size and patch size of the synthetic object/context pairs on the pretrained Lite0 (upsampled from 32x32)
LITE0_SYNTHETIC_SIZE, LITE0_SYNTHETIC_PATCH = 64, 16


class PlainEncoder(nn.Module):
    """Bias-free, BatchNorm-free CNN (conv-ReLU x3, average pooling, linear): both Zennit and Captum LRP support it."""

    def __init__(self, widths=(16, 32, 64), embedding_dim: int = 32):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1, bias=False), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(widths[1], widths[2], 3, stride=2, padding=1, bias=False), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], embedding_dim, bias=False)

    def forward(self, x):
        x = self.relu3(self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))


def train_synthetic_encoder(path: Path, steps: int = 400, seed: int = 0) -> PlainEncoder:
    """Train (or load from ``path``) the encoder on object classification of synthetic images (backgrounds vary)."""
    torch.manual_seed(seed)
    model = PlainEncoder()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    data = make_images(3000, size=32, seed=seed + 1, n_objects=6, n_backgrounds=6)
    head = nn.Linear(32, 6)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc='training the synthetic encoder'):
        index = torch.randint(0, 2500, (64,), generator=gen)
        x = data.x[index]
        flip = torch.rand(64, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = nn.functional.cross_entropy(head(model(x)), data.object[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (head(model(data.x[2500:])).argmax(1) == data.object[2500:]).float().mean().item()
    print(f'synthetic encoder: held-out object accuracy {accuracy:.3f}')
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def photo_model(args):
    """The model for the photos: the shipped demo model if available, else None."""
    try:
        from zennit_bilrp.models.demo import demo_composite, load_demo_model
        model = load_demo_model()
        return model, demo_composite(model), 'demo model (zennit_bilrp.models.demo, h=96)'
    except (ImportError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f'demo model unavailable ({type(error).__name__}); using the synthetic encoder on the photos')
        return None


def torchvision_model(spec: str, weights: str):
    import torchvision

    name = spec.split(':', 1)[1]
    model = getattr(torchvision.models, name)()
    if weights:
        model.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
    else:
        print(f'warning: no --weights given, {name} is randomly initialized')
    if hasattr(model, 'fc'):
        model.fc = nn.Identity()
    elif hasattr(model, 'classifier'):
        model.classifier = nn.Identity()
    from zennit.composites import EpsilonPlus
    return model.eval(), EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model)), f'torchvision {name}'


def photo_pairs(count: int, size=(64, 96)):
    from skimage import data

    from zennit_bilrp.models.demo import load_demo_pair, load_second_pair, to_tensor

    pairs = [load_demo_pair(size), load_second_pair(size)]
    for image in (data.chelsea(), data.coffee()):
        h, w = image.shape[:2]
        crop_h, crop_w = int(h * 0.8), int(h * 0.8 * size[1] / size[0])
        crop_w = min(crop_w, w)
        pairs.append((to_tensor(image[:crop_h, :crop_w], size), to_tensor(image[h - crop_h:, w - crop_w:], size)))
    pairs = pairs[:count]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def lite0_pairs(size=LITE0_SIZE):
    """Photo pairs of the lite0 dataset, ImageNet-normalized ``(3, 3, H, W)`` tensors ``(x_a, x_b)`` and their
    labels: the stereo pair (first; its disparity gives a ground truth), the astronaut vs a zoomed mirrored crop,
    chelsea vs its mirror image."""
    from skimage import data

    from zennit_bilrp.models.demo import load_demo_pair, load_second_pair, to_tensor
    from zennit_bilrp.models.pretrained import imagenet_normalize

    cat = to_tensor(data.chelsea(), size)
    pairs = [load_demo_pair(size), load_second_pair(size), (cat, cat.flip(-1))]
    labels = ['stereo left vs right', 'astronaut vs zoomed mirrored crop', 'chelsea vs mirror']
    return (imagenet_normalize(torch.cat([p[0] for p in pairs])), imagenet_normalize(torch.cat([p[1] for p in pairs])),
            labels)


def stereo_truth(grid_a, grid_b, disparity: torch.Tensor) -> tuple:
    """Ground truth of the stereo pair on the patch grids: the true right point of each left patch centre
    ``(P_a, 2)`` (NaN without a valid disparity) and the bool matrix ``(P_a, P_b)`` of the right patch holding it."""
    centers = grid_a.patch_centers()
    rows, cols = centers[:, 0].round().long(), centers[:, 1].round().long()
    d = disparity.double()[rows, cols]
    target = torch.stack([centers[:, 0], centers[:, 1] - d], dim=1)
    (ph, pw), (gh, gw) = grid_b.patch, grid_b.grid
    inside = torch.isfinite(d) & (target[:, 1] >= 0) & (target[:, 1] < gw * pw)
    match = torch.zeros(grid_a.num_patches, grid_b.num_patches, dtype=torch.bool)
    for i in torch.nonzero(inside).flatten().tolist():
        r, c = int(target[i, 0] // ph), int(target[i, 1] // pw)
        match[i, grid_b.patch_index(min(r, gh - 1), min(c, gw - 1))] = True
    return target, match


def stereo_scores(relevance: torch.Tensor, grid_a, grid_b, disparity: torch.Tensor, k: int) -> dict:
    """Correspondence scores of one stereo pair's relevance ``(P_a, P_b)``: share of the top-k pairs whose right
    patch holds the true match of the left patch centre (pairs whose left centre has no valid disparity are left
    out), its chance level, and the mean distance (pixels) of the top-k right centres from the true matches
    (:func:`~zennit_bilrp.models.demo.correspondence_error`)."""
    from zennit_bilrp.models.demo import correspondence_error

    _, match = stereo_truth(grid_a, grid_b, disparity)
    valid = match.any(dim=1)
    scores = relevance.double().masked_fill(~valid[:, None], -math.inf).flatten()
    top = torch.topk(scores, min(k, int(valid.sum()) * grid_b.num_patches)).indices
    i, j = top // grid_b.num_patches, top % grid_b.num_patches
    centers_a, centers_b = grid_a.patch_centers(), grid_b.patch_centers()
    return {'stereo_pointing': float(match[i, j].double().mean()),
            'stereo_chance': float(match[valid].double().mean()),
            'stereo_error_px': correspondence_error(centers_a[i], centers_b[j], disparity)}


def explain(method: str, model, composite, x_a, x_b, similarity: str, patch: int, args):
    embed = model
    if method == 'bilrp_depth_gamma':
        with BiLRP(model, composite=composite, similarity=similarity) as bilrp:
            return bilrp(x_a, x_b, pooling=patch, marginals=False).relevance
    if method == 'bilrp_mobile':
        from zennit_bilrp.models.pretrained import pretrained_composite
        with BiLRP(model, composite=pretrained_composite(model), similarity=similarity) as bilrp:
            return bilrp(x_a, x_b, pooling=patch, marginals=False).relevance
    if method == 'bilrp_eplus':
        from zennit.composites import EpsilonPlus
        eplus = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
        with BiLRP(model, composite=eplus, similarity=similarity) as bilrp:
            return bilrp(x_a, x_b, pooling=patch, marginals=False).relevance
    if method == 'bilrp_epsilon':
        with BiLRP(model, composite=zennit_epsilon_composite(1e-6), canonizers=canonizers_for(model),
                   similarity=similarity) as bilrp:
            return bilrp(x_a, x_b, pooling=patch, marginals=False).relevance
    if method == 'captum_lrp':
        from zennit_bilrp.interop.captum_lrp import epsilon_rules
        return captum_bilrp(model, x_a, x_b, similarity=similarity, pooling=patch, rules=epsilon_rules(1e-6))
    if method.endswith('_outer'):
        name = {'saliency_outer': 'saliency', 'ixg_outer': 'input_x_gradient', 'ig_outer': 'integrated_gradients'}
        kwargs = {'n_steps': args.ig_steps} if method == 'ig_outer' else {}
        return marginal_outer_product(embed, x_a, x_b, name[method], similarity, pooling=patch, **kwargs)
    if method == 'hessian_product':
        return hessian_product(embed, x_a, x_b, similarity, pooling=patch)
    if method == 'integrated_jac':
        return integrated_jacobians(embed, x_a, x_b, similarity, pooling=patch, reference='mean',
                                    n_steps=args.ij_steps)
    if method == 'random':
        return random_pairs(x_a, x_b, pooling=patch, seed=0)
    raise ValueError(method)


def evaluate(dataset: str, method: str, model, composite, x_a, x_b, masks, similarity, patch, args, device,
             disparity=None):
    grid = Pooling.ensure(patch).resolve(x_a.shape[1:])
    forward = pair_similarity(model, similarity)
    if args.repeats > 0:
        # cost of one pair: after a warm-up call, the fastest of --repeats timed calls and their largest peak memory
        explain(method, model, composite, x_a[:1], x_b[:1], similarity, patch, args)
        costs = [measure(lambda: explain(method, model, composite, x_a[:1], x_b[:1], similarity, patch, args),
                         device)[1:] for _ in range(args.repeats)]
        seconds, peak = min(c[0] for c in costs), max(c[1] for c in costs)
        relevance = explain(method, model, composite, x_a, x_b, similarity, patch, args).double()
    else:  # --repeats 0: one timed call on all pairs (no warm-up), its time and peak memory divided by the pairs
        result, seconds, peak = measure(lambda: explain(method, model, composite, x_a, x_b, similarity, patch, args),
                                        device)
        relevance = result.double()
        seconds, peak = seconds / x_a.shape[0], peak / x_a.shape[0]
    row = {'dataset': dataset, 'method': method, 'pairs': x_a.shape[0], 'seconds_per_pair': seconds,
           'peak_mb_per_pair': peak / 2 ** 20}
    if disparity is not None:  # the first pair is the stereo pair
        row.update(stereo_scores(relevance[0].cpu(), grid, grid, disparity, args.k))
    if masks is not None:
        row['pointing_game'] = float(pointing_game(relevance, masks[0], masks[1], grid, grid, k=args.k).mean())
        row['pointing_chance'] = float(pointing_chance(masks[0], masks[1], grid, grid).mean())
    curve = pairwise_patch_flipping(forward, x_a, x_b, pair_order(relevance), grid, grid, steps=args.steps,
                                    fill=args.fill)
    random_curve = pairwise_patch_flipping(forward, x_a, x_b, random_pair_order(relevance, seed=1), grid, grid,
                                           steps=args.steps, fill=args.fill)
    row['flip_auc'] = float(flipping_auc(curve, reduce=True))
    row['flip_auc_random_order'] = float(flipping_auc(random_curve, reduce=True))
    marg_a = marginal_patch_flipping(forward, x_a, x_b, relevance.sum(dim=2), grid, steps=args.marginal_steps,
                                     fill=args.fill)
    marg_b = marginal_patch_flipping(forward, x_b, x_a, relevance.sum(dim=1), grid, steps=args.marginal_steps,
                                     fill=args.fill)
    row['marginal_flip_auc'] = float(flipping_auc(torch.cat([marg_a, marg_b]), reduce=True))
    row['curve'] = (curve.mean(dim=0) / curve[:, 0].mean()).tolist()
    return row, relevance


COLUMNS = ('dataset', 'method', 'pairs', 'pointing_game', 'pointing_chance', 'flip_auc', 'flip_auc_random_order',
           'marginal_flip_auc', 'stereo_pointing', 'stereo_chance', 'stereo_error_px', 'seconds_per_pair',
           'peak_mb_per_pair')


def format_table(rows) -> str:
    head = ('dataset', 'method', 'pointing', 'chance', 'flip AUC', 'random order', 'marg. AUC', 'stereo pointing',
            'stereo chance', 'stereo error px', 's/pair', 'MB/pair')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    def num(row, key, fmt='{:.3f}'):
        value = row.get(key)
        return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)

    for r in rows:
        lines.append('| ' + ' | '.join([
            r['dataset'], r['method'], num(r, 'pointing_game'), num(r, 'pointing_chance'), num(r, 'flip_auc'),
            num(r, 'flip_auc_random_order'), num(r, 'marginal_flip_auc'), num(r, 'stereo_pointing', '{:.2f}'),
            num(r, 'stereo_chance', '{:.2f}'), num(r, 'stereo_error_px', '{:.1f}'),
            num(r, 'seconds_per_pair', '{:.3f}'),
            num(r, 'peak_mb_per_pair', '{:.1f}')]) + ' |')
    return '\n'.join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r['dataset'] for r in rows))
    methods = [m for m in METHODS if any(r['method'] == m for r in rows)]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    width = 0.8 / max(len(datasets), 1)
    for d, dataset in enumerate(datasets):
        sub = [r for r in rows if r['dataset'] == dataset]
        pos = np.array([methods.index(r['method']) for r in sub]) + d * width
        color = plt.cm.tab10(d)
        if any('pointing_game' in r for r in sub):
            axes[0].bar(pos, [r.get('pointing_game', np.nan) for r in sub], width, label=dataset, color=color)
            axes[0].axhline(sub[0]['pointing_chance'], color=color, ls=':', lw=1.5, label=f'chance ({dataset})')
        elif any('stereo_pointing' in r for r in sub):  # the stereo pair: top-k pairs at the true correspondence
            axes[0].bar(pos, [r.get('stereo_pointing', np.nan) for r in sub], width, label=f'{dataset} (stereo)',
                        color=color)
            axes[0].axhline(sub[0]['stereo_chance'], color=color, ls=':', lw=1.5, label=f'chance ({dataset})')
        axes[1].bar(pos, [r['flip_auc'] for r in sub], width, label=dataset, color=color)
        axes[1].scatter(pos, [r['flip_auc_random_order'] for r in sub], marker='_', s=60, color='k',
                        label='random order' if d == 0 else None, zorder=3)
        axes[2].bar(pos, [r['seconds_per_pair'] for r in sub], width, label=dataset, color=color)
    for axis in axes[:3]:
        axis.set_xticks(np.arange(len(methods)) + width * (len(datasets) - 1) / 2)
        axis.set_xticklabels(methods, rotation=60, ha='right', fontsize=8)
    shown = 'synthetic_resnet' if 'synthetic_resnet' in datasets else datasets[0]
    for i, r in enumerate(r for r in rows if r['dataset'] == shown):
        axes[3].plot(r['curve'], color=colors[i % 10], label=r['method'], ls='--' if r['method'] == 'random' else '-')
    axes[3].set_title(f'pairwise patch flipping ({shown})')
    axes[0].set_title('pointing game (top-k pairs in both objects;\nstereo: at the true match) ↑', fontsize=10)
    axes[1].set_title('pairwise flipping AUC (y_t / y_0) ↓')
    axes[2].set_title('seconds per pair (log)')
    axes[2].set_yscale('log')
    axes[3].set_xlabel('patch pairs removed')
    axes[3].set_ylabel('similarity / initial')
    axes[3].legend(fontsize=7, loc='lower left')
    axes[0].set_ylim(0, 1.3)
    axes[2].set_ylim(top=30 * max(r['seconds_per_pair'] for r in rows))
    axes[1].set_ylim(0, max(1.3, 1.3 * max(r['flip_auc'] for r in rows)))
    for axis in axes[:3]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, ncol=2, loc='upper right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('out/compare_methods'))
    parser.add_argument('--pairs', type=int, default=16, help='synthetic pairs')
    parser.add_argument('--photos', type=int, default=4, help='photo pairs (0 to skip, at most 4)')
    parser.add_argument('--methods', default=','.join(METHODS))
    parser.add_argument('--k', type=int, default=10, help='top pairs of the pointing game')
    parser.add_argument('--steps', type=int, default=32, help='patch pairs removed in pairwise flipping')
    parser.add_argument('--marginal-steps', type=int, default=8, help='patches removed in marginal flipping')
    parser.add_argument('--fill', choices=('blur', 'mean'), default='blur')
    parser.add_argument('--similarity', choices=('auto', 'cosine', 'dot'), default='auto',
                        help="'auto': dot for the synthetic encoder (trained as a classifier), cosine otherwise")
    parser.add_argument('--ig-steps', type=int, default=16)
    parser.add_argument('--ij-steps', type=int, default=8)
    parser.add_argument('--train-steps', type=int, default=400)
    parser.add_argument('--repeats', type=int, default=2,
                        help='timed one-pair calls per method (the fastest is reported); 0: time the call on all pairs')
    parser.add_argument('--datasets', default='synthetic,synthetic_resnet,photos',
                        help=f'comma-separated datasets of --model synthetic, from {DATASETS} (lite0 needs the '
                             'pretrained extra)')
    parser.add_argument('--model', default='synthetic',
                        help="'synthetic' (default; photos use the demo model if shipped) or 'torchvision:NAME'")
    parser.add_argument('--weights', default='', help='state-dict file for --model torchvision:NAME (no downloads)')
    parser.add_argument('--size', type=int, default=224, help='image side for --model torchvision:NAME (multiple of 7)')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA when present), 'cpu' or 'cuda'")
    parser.add_argument('--force', action='store_true', help='recompute cached results')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          ('cpu' if args.device == 'auto' else args.device))
    methods = [m for m in args.methods.split(',') if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f'unknown methods {sorted(unknown)}; choose from {METHODS}')
    datasets = [d for d in args.datasets.split(',') if d]
    if set(datasets) - set(DATASETS):
        parser.error(f'unknown datasets {sorted(set(datasets) - set(DATASETS))}; choose from {DATASETS}')
    out = args.out
    (out / 'results').mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def pick(default: str) -> str:
        return default if args.similarity == 'auto' else args.similarity

    tasks = []  # (dataset, model, composite, x_a, x_b, masks, similarity, patch, description)
    extras = {}  # dataset -> (methods, disparity)
    synthetic = args.model == 'synthetic' and {'synthetic', 'synthetic_resnet', 'photos'} & set(datasets)
    if synthetic:
        encoder = train_synthetic_encoder(out / 'synthetic_encoder.pt', steps=args.train_steps).to(device)
        pairs = make_pairs(args.pairs, size=32, seed=123, n_objects=6, n_backgrounds=6)
    if synthetic and 'synthetic' in datasets:
        tasks.append(('synthetic', encoder, bilrp_composite(), pairs.x_a.to(device), pairs.x_b.to(device),
                      (pairs.mask_a.to(device), pairs.mask_b.to(device)), pick('dot'), 4,
                      f'{args.pairs} synthetic 32x32 pairs (patches 4x4), bias-free CNN trained on synthetic objects '
                      f'(h=32), {pick("dot")} similarity'))
    if synthetic and 'synthetic_resnet' in datasets:
        try:
            from zennit_bilrp.models.synthetic import load_synthetic_encoder
            resnet = load_synthetic_encoder('object').to(device)
            # biases kept: zeroing them in gamma/LRP-0 rules is unstable on trained, merged BatchNorm (see
            # zennit_bilrp.lrp.composites.BiLRPGamma); the zero-bias z+ variant is the bilrp_eplus row
            resnet_composite = bilrp_composite(canonizers=canonizers_for(resnet))
            tasks.append(('synthetic_resnet', resnet, resnet_composite, pairs.x_a.to(device), pairs.x_b.to(device),
                          (pairs.mask_a.to(device), pairs.mask_b.to(device)), pick('dot'), 4,
                          f'the same pairs, the shipped object-keyed SmallResNet (BatchNorm, skip connections; '
                          f'zennit_bilrp.models.synthetic.load_synthetic_encoder), {pick("dot")} similarity'))
        except (ImportError, FileNotFoundError, KeyError) as error:
            print(f'shipped synthetic encoder unavailable ({type(error).__name__}); skipping synthetic_resnet')
    if synthetic and 'photos' in datasets and args.photos:
        found = photo_model(args)
        model, composite, name = found if found else (encoder, bilrp_composite(), 'synthetic encoder')
        similarity = pick('cosine' if found else 'dot')
        x_a, x_b = photo_pairs(args.photos)
        tasks.append(('photos', model.to(device), composite, x_a.to(device), x_b.to(device), None, similarity, 8,
                      f'{x_a.shape[0]} scikit-image photo pairs at 64x96 (patches 8x8), {name}, {similarity} '
                      'similarity'))
    if args.model == 'synthetic' and 'lite0' in datasets:
        from zennit_bilrp.models.pretrained import has_pretrained_weights, load_pretrained_encoder
        if not has_pretrained_weights():
            print("lite0: the weights of the 'pretrained' extra are not installed; skipping the lite0 dataset")
        else:
            from zennit_bilrp.models.demo import load_demo_disparity
            x_a, x_b, labels = lite0_pairs(LITE0_SIZE)
            lite0 = load_pretrained_encoder().to(device)
            extras['lite0'] = (LITE0_METHODS, load_demo_disparity(LITE0_SIZE))
            tasks.append(('lite0', lite0, None, x_a.to(device), x_b.to(device), None, pick('cosine'), LITE0_PATCH,
                          f'{x_a.shape[0]} scikit-image photo pairs ({", ".join(labels)}) at '
                          f'{LITE0_SIZE[0]}x{LITE0_SIZE[1]} (patches {LITE0_PATCH}x{LITE0_PATCH}), '
                          'ImageNet-normalized, pretrained EfficientNet-Lite0 (1280-d pooled features), '
                          f'{pick("cosine")} similarity'))
    if args.model == 'synthetic' and 'lite0_synthetic' in datasets:
        from zennit_bilrp.models.pretrained import has_pretrained_weights, imagenet_normalize, load_pretrained_encoder
        if not has_pretrained_weights():
            print("lite0_synthetic: the weights of the 'pretrained' extra are not installed; skipping it")
        else:
            objects = make_pairs(args.pairs, size=32, seed=123, n_objects=6, n_backgrounds=6)
            size = LITE0_SYNTHETIC_SIZE

            def upsample(x):  # nearest: the object masks stay exact
                return torch.nn.functional.interpolate(x, size=(size, size), mode='nearest')

            masks = tuple(upsample(m[:, None].float())[:, 0].bool().to(device)
                          for m in (objects.mask_a, objects.mask_b))
            extras['lite0_synthetic'] = (LITE0_METHODS, None)
            tasks.append(('lite0_synthetic', load_pretrained_encoder().to(device), None,
                          imagenet_normalize(upsample(objects.x_a)).to(device),
                          imagenet_normalize(upsample(objects.x_b)).to(device), masks, pick('cosine'),
                          LITE0_SYNTHETIC_PATCH,
                          f'the {args.pairs} synthetic object pairs upsampled to {size}x{size} (patches '
                          f'{LITE0_SYNTHETIC_PATCH}x{LITE0_SYNTHETIC_PATCH}), ImageNet-normalized, pretrained '
                          f'EfficientNet-Lite0, {pick("cosine")} similarity'))
    if args.model == 'synthetic':
        if not tasks:
            parser.error(f'no dataset to run (--datasets {args.datasets!r})')
    elif args.model.startswith('torchvision:'):
        if args.size % 7:
            parser.error('--size must be a multiple of 7 (patches of size/7 pixels)')
        model, composite, name = torchvision_model(args.model, args.weights)
        x_a, x_b = photo_pairs(max(args.photos, 1), size=(args.size, args.size))
        tasks.append(('photos', model.to(device), composite, x_a.to(device), x_b.to(device), None, pick('cosine'),
                      args.size // 7, f'{x_a.shape[0]} scikit-image photo pairs at {args.size}x{args.size} '
                      f'(patches {args.size // 7}), {name}, {pick("cosine")} similarity'))
    else:
        parser.error(f'unknown --model {args.model!r}')

    rows, notes, relevances = [], [], {}
    for dataset, model, composite, x_a, x_b, masks, similarity, patch, description in tasks:
        notes.append(f'{dataset}: {description}')
        allowed, disparity = extras.get(dataset, (METHODS, None))
        allowed = [m for m in allowed if m != 'bilrp_mobile' or dataset.startswith('lite0')]
        for method in tqdm([m for m in methods if m in allowed], desc=dataset):
            cache = out / 'results' / f'{dataset}__{method}.json'
            if cache.is_file() and not args.force:
                rows.append(json.loads(cache.read_text()))
                if cache.with_suffix('.pt').is_file():
                    relevances[(dataset, method)] = torch.load(cache.with_suffix('.pt'), weights_only=True)
                continue
            try:
                row, relevance = evaluate(dataset, method, model, composite, x_a, x_b, masks, similarity, patch, args,
                                          device, disparity)
                relevances[(dataset, method)] = relevance
                torch.save(relevance.cpu(), cache.with_suffix('.pt'))
            except (TypeError, RuntimeError) as error:  # e.g. Captum's LRP refusing a layer
                row = {'dataset': dataset, 'method': method, 'error': f'{type(error).__name__}: {error}'[:200]}
                print(f'{dataset}/{method}: not applicable ({row["error"]})')
            cache.write_text(json.dumps(row))
            rows.append(row)
        with torch.no_grad():
            y = pair_similarity(model, similarity)(x_a, x_b).double().cpu()
        gaps = []
        for method in ('bilrp_depth_gamma', 'bilrp_mobile', 'bilrp_eplus', 'bilrp_epsilon', 'captum_lrp'):
            if (dataset, method) in relevances:
                total = relevances[(dataset, method)].sum(dim=(1, 2)).cpu()
                gaps.append(f'{method} {float((y - total).abs().max() / y.abs().max()):.1e}')
        if gaps:
            notes.append(f'{dataset}: conservation max|y - sum R| / max|y|: ' + ', '.join(gaps))
        if (dataset, 'integrated_jac') in relevances:
            target = integrated_jacobian_exactness(model, x_a, x_b, similarity, reference='mean').double().cpu()
            total = relevances[(dataset, 'integrated_jac')].sum(dim=(1, 2)).cpu()
            notes.append(f'{dataset}: integrated Jacobians exactness max|sum A - (y(a,b) - y(a,r_b) - y(r_a,b) + '
                         f'y(r_a,r_b))| / max|y|: {float((total - target).abs().max() / y.abs().max()):.1e}')
        both = [relevances.get((dataset, m)) for m in ('bilrp_epsilon', 'captum_lrp')]
        if all(r is not None for r in both):
            diff = float((both[0].cpu() - both[1].cpu()).abs().max() / both[0].abs().max().cpu())
            notes.append(f'{dataset}: max relative difference BiLRP (epsilon, Zennit) vs BiLRP via Captum LRP: '
                         f'{diff:.1e}')

    ok = [r for r in rows if 'error' not in r]
    table = format_table(ok)
    failed = [f"{r['dataset']}/{r['method']}: {r['error']}" for r in rows if 'error' in r]
    elapsed = time.perf_counter() - start
    hardware = (torch.cuda.get_device_name(device) if device.type == 'cuda'
                else f'CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores visible')
    text = '\n'.join([table, '', *notes, *[f'not applicable: {f}' for f in failed],
                      f'device: {hardware}; torch {torch.__version__}; wall time {elapsed:.0f} s'])
    print(text)
    with open(out / 'compare_methods.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS) + ['error'], extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    (out / 'compare_methods.md').write_text(text + '\n')
    plot(ok, out / 'compare_methods.png')
    print(f'wrote {out / "compare_methods.csv"}, {out / "compare_methods.md"}, {out / "compare_methods.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
