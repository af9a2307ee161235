"""Which rule for depthwise convolutions? Conservation and heatmaps on the pretrained EfficientNet-Lite0.

For each rule that :class:`zennit_bilrp.lrp.mobile_composites.MobileComposite` can give the depthwise convolutions
(everything else fixed: z^B on the pixels, z+ in the other convolutions, canonizers_for(model), biases zeroed), and
for each photo pair, this measures

- ``sum R / y`` of the exact cosine BiLRP explanation of all 1280 units (float64). The per-unit totals
  ``t_m(x) = sum_i R_m(x)_i`` come from one second-order pass: the LRP backward pass is linear in its seed ``r``,
  so ``t(x) = d/dr sum_i [M(x) (phi(x) * r)]_i``; then ``sum R = sum_m t_m(x) t_m(x') / (|phi(x)| |phi(x')|)``;
- the BiLRP marginal of each image, ``M(x) (phi(x) * phi(x')) / (|phi(x)| |phi(x')|)`` (one LRP pass), drawn
  as a heatmap.

Writes ``depthwise_rules.csv`` and ``depthwise_rules.png`` to ``--out``. Run:
``python examples/depthwise_rules.py --out docs/_static`` (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402
from tqdm import tqdm  # noqa: E402

from zennit_bilrp.models.demo import to_tensor  # noqa: E402
from zennit_bilrp.models.pretrained import imagenet_normalize, load_pretrained_encoder, pretrained_composite  # noqa: E402

RULES = {'zplus': 'z+ (as EpsilonPlus)', 'epsilon': 'LRP-epsilon', 'wsquare': 'w^2',
         'zplus_wsquare': 'z+, else w^2 (default)'}


def photo_pairs(size: tuple) -> dict:
    """Photo pairs from scikit-image, RGB in [0, 1] at ``size``."""
    left, right, _ = data.stereo_motorcycle()
    cat, astronaut = data.chelsea(), data.astronaut()
    pairs = {'stereo left / right': (left, right), 'cat / mirrored cat': (cat, cat[:, ::-1]),
             'astronaut / mirrored': (astronaut, astronaut[:, ::-1]), 'coffee / cat': (data.coffee(), cat)}
    return {name: tuple(to_tensor(np.ascontiguousarray(image), size).double() for image in pair)
            for name, pair in pairs.items()}


def unit_totals(model, composite, x: torch.Tensor) -> tuple:
    """Embeddings ``phi`` (N, h) and per-unit relevance totals ``t`` (N, h) from one second-order pass."""
    with composite.context(model):
        x = x.clone().requires_grad_()
        out = model(x)
        seed = torch.ones_like(out, requires_grad=True)
        (relevance,) = torch.autograd.grad(out, x, out.detach() * seed, create_graph=True)
        (totals,) = torch.autograd.grad(relevance.sum(), seed)
    return out.detach(), totals


def marginals(model, composite, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """BiLRP marginals of a pair ``x = [x_a, x_b]`` (cosine): channels summed, ``(2, H, W)``."""
    scale = phi.norm(dim=1).prod()
    with composite.context(model):
        x = x.clone().requires_grad_()
        out = model(x)
        (relevance,) = torch.autograd.grad(out, x, out.detach() * phi.flip(0) / scale)
    return relevance.sum(1)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='results/depthwise_rules')
    parser.add_argument('--size', type=int, nargs=2, default=[128, 192], metavar=('H', 'W'))
    args = parser.parse_args(argv)
    model = load_pretrained_encoder(dtype=torch.float64)
    pairs = photo_pairs(tuple(args.size))
    rows, maps = [], {}
    for rule in tqdm(RULES, desc='rules'):
        for name, (a, b) in pairs.items():
            x = imagenet_normalize(torch.cat([a, b]))
            phi, totals = unit_totals(model, pretrained_composite(model, depthwise=rule), x)
            scale = float(phi.norm(dim=1).prod())
            y = float(phi[0] @ phi[1]) / scale
            rows.append({'rule': rule, 'pair': name, 'similarity': y,
                         'sum_relevance_over_y': float(totals[0] @ totals[1]) / scale / y})
            if name in ('stereo left / right', 'astronaut / mirrored'):
                maps[rule, name] = marginals(model, pretrained_composite(model, depthwise=rule), x, phi)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / 'depthwise_rules.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shown = [name for name in pairs if any(key[1] == name for key in maps)]
    fig, axes = plt.subplots(len(RULES), 2 * len(shown), figsize=(3.0 * 2 * len(shown), 2.3 * len(RULES)),
                             squeeze=False)
    for i, rule in enumerate(RULES):
        for j, name in enumerate(shown):
            ratio = next(r['sum_relevance_over_y'] for r in rows if r['rule'] == rule and r['pair'] == name)
            for k in range(2):
                heat = maps[rule, name][k].numpy()
                limit = float(np.abs(heat).max()) or 1.0
                ax = axes[i, 2 * j + k]
                ax.imshow(heat, cmap='bwr', vmin=-limit, vmax=limit)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{name.split(' / ')[k]}: sum R / y = {ratio:.3f}", fontsize=9)
                if j == 0 and k == 0:
                    ax.set_ylabel(RULES[rule], fontsize=10)
    fig.suptitle('BiLRP marginals on the pretrained EfficientNet-Lite0 by depthwise rule (red +, blue -, each '
                 'map scaled to its own maximum)', fontsize=10)
    fig.tight_layout()
    fig.savefig(out / 'depthwise_rules.png', dpi=90)
    for row in rows:
        print(f"{row['rule']:14s} {row['pair']:22s} y = {row['similarity']:.3f}  sum R / y = "
              f"{row['sum_relevance_over_y']:.5f}")
    return rows


if __name__ == '__main__':
    main()
