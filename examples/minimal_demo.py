"""Minimal BiLRP figure: the scikit-image stereo pair through a small ResNet-style encoder (offline).

Usage: python examples/minimal_demo.py --out bilrp_demo.png
"""
import argparse

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data, transform  # noqa: E402
from zennit.composites import EpsilonPlus  # noqa: E402

from zennit_bilrp import BiLRP, canonizers_for  # noqa: E402
from zennit_bilrp.models import SmallResNet  # noqa: E402


def to_tensor(image, shape=(96, 144)):
    image = transform.resize(image, shape, anti_aliasing=True)
    return torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='bilrp_demo.png')
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SmallResNet().eval()
    left, right, _ = data.stereo_motorcycle()
    x_a, x_b = to_tensor(left), to_tensor(right)
    composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
    with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
        result = bilrp(x_a, x_b, pooling=12)
    top = result.top_pairs(k=20, by='abs')
    fig, ax = plt.subplots(figsize=(9, 4.5))
    gap, width = 8, x_a.shape[3]
    canvas = np.ones((x_a.shape[2], 2 * width + gap, 3))
    canvas[:, :width] = x_a[0].permute(1, 2, 0).numpy()
    canvas[:, width + gap:] = x_b[0].permute(1, 2, 0).numpy()
    ax.imshow(canvas)
    values = top.values[0]
    vmax = values.abs().max()
    for (ra, ca), (rb, cb), value in zip(top.centers_a[0], top.centers_b[0], values):
        color = 'red' if value > 0 else 'blue'
        ax.plot([ca, cb + width + gap], [ra, rb], color=color, alpha=float(0.3 + 0.7 * abs(value) / vmax),
                linewidth=float(0.5 + 2.5 * abs(value) / vmax))
    ax.set_title(f'BiLRP, cosine similarity {result.similarity.item():.3f} '
                 f'(sum R = {result.relevance.sum().item():.3f}); random-init encoder')
    ax.axis('off')
    fig.savefig(args.out, dpi=120, bbox_inches='tight')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
