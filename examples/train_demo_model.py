"""Train the offline demo encoder (SimCLR-style) on the photos that scikit-image bundles.

Two random augmented views (random resized crop, mirror, color jitter, random gray) of random crops of the
training photos form the positive pairs of the NT-Xent loss (Chen et al., "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020) with a small projection head on top of the encoder; the encoder
(without the head) is the demo model. The stereo pair used by the demo and its sanity check is *not* trained on.

Usage (about 5 minutes on 2 CPU cores)::

    OMP_NUM_THREADS=2 python examples/train_demo_model.py --out out/demo_model
    cp out/demo_model/demo_encoder.pt zennit_bilrp/data/demo_encoder.pt   # to ship the result

Writes ``demo_encoder.pt`` (checkpoint loadable by :func:`zennit_bilrp.models.demo.load_demo_model`),
``train_log.json`` (losses, settings, correspondence scores) and ``checkpoint_last.pt`` (to resume with
``--resume``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align
from tqdm.auto import tqdm

from zennit_bilrp.models.demo import build_demo_encoder

#: bundled scikit-image photos used for training (the stereo pair is deliberately excluded)
TRAIN_IMAGES = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina',
                'colorwheel', 'camera', 'coins', 'brick', 'grass', 'gravel', 'moon', 'clock', 'page', 'text')


def load_images(longest: int) -> torch.Tensor:
    """All training photos, scaled so that the longer side is ``longest``, zero-padded into one tensor
    ``(n, 3, S, S)``; returns the tensor and the valid (height, width) of each."""
    from skimage import data, img_as_float32, transform

    images, sizes = [], []
    for name in TRAIN_IMAGES:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = img_as_float32(image[..., :3])
        scale = longest / max(image.shape[:2])
        shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        image = transform.resize(image, shape, anti_aliasing=True, preserve_range=True).clip(0, 1)
        images.append(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1))
        sizes.append(shape)
    batch = torch.zeros(len(images), 3, longest, longest)
    for i, image in enumerate(images):
        batch[i, :, :image.shape[1], :image.shape[2]] = image
    return batch, torch.tensor(sizes, dtype=torch.float32)


def random_boxes(n: int, sizes: torch.Tensor, min_side: float, max_side: float, generator: torch.Generator):
    """``n`` random square-ish boxes ``(n, 5)`` (image index, x1, y1, x2, y2) inside random images."""
    index = torch.randint(len(sizes), (n,), generator=generator)
    hw = sizes[index]
    side = min_side + (max_side - min_side) * torch.rand(n, generator=generator)
    aspect = torch.exp((torch.rand(n, generator=generator) - 0.5) * math.log(4 / 3) * 2)
    bw = torch.minimum(side * aspect.sqrt(), hw[:, 1])
    bh = torch.minimum(side / aspect.sqrt(), hw[:, 0])
    x1 = torch.rand(n, generator=generator) * (hw[:, 1] - bw)
    y1 = torch.rand(n, generator=generator) * (hw[:, 0] - bh)
    return torch.stack([index.float(), x1, y1, x1 + bw, y1 + bh], dim=1)


def view_boxes(base: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random sub-box (40-100 % of each side) of each base box: the two views of a pair overlap partly."""
    n = base.shape[0]
    w, h = base[:, 3] - base[:, 1], base[:, 4] - base[:, 2]
    fw = 0.4 + 0.6 * torch.rand(n, generator=generator)
    fh = (fw * torch.exp((torch.rand(n, generator=generator) - 0.5) * 0.3)).clamp(max=1.0)
    x1 = base[:, 1] + torch.rand(n, generator=generator) * w * (1 - fw)
    y1 = base[:, 2] + torch.rand(n, generator=generator) * h * (1 - fh)
    return torch.stack([base[:, 0], x1, y1, x1 + fw * w, y1 + fh * h], dim=1)


def color_augment(x: torch.Tensor, generator: torch.Generator, strength: float = 0.4, grey_p: float = 0.2
                  ) -> torch.Tensor:
    """Random brightness, contrast, saturation, per-channel gain (all by ``strength``), gray (probability
    ``grey_p``) and mirror (p = 0.5)."""
    n = x.shape[0]

    def factor(scale):
        return (1 + scale * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1))

    x = x * factor(strength)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(strength) + mean
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * factor(strength)
    x = x * (1 + 0.1 * strength * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1))
    to_grey = torch.rand(n, 1, 1, 1, generator=generator) < grey_p
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    x = torch.where(to_grey, gray, x)
    mirror = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    x = torch.where(mirror, x.flip(-1), x)
    return x.clamp(0, 1)


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss: each view must pick its partner among the other ``2n - 1`` views (cosine / temperature)."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float('-inf'))
    n = z_a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, target)


def correspondence_scores(model: nn.Module, k: int = 25, seeds=(0, 1, 2)) -> dict:
    """Stereo correspondence error of the top-k BiLRP pairs: this model vs randomly initialized copies."""
    from zennit_bilrp import BiLRP
    from zennit_bilrp.models.demo import (
        DEMO_PATCH,
        DEMO_SIMILARITY,
        correspondence_error,
        demo_composite,
        load_demo_disparity,
        load_demo_pair,
    )

    x_a, x_b = load_demo_pair()
    disparity = load_demo_disparity()

    def score(net):
        with BiLRP(net, composite=demo_composite(net), similarity=DEMO_SIMILARITY) as bilrp:
            result = bilrp(x_a, x_b, pooling=DEMO_PATCH, marginals=False)
        top = result.top_pairs(k)
        return correspondence_error(top.centers_a[0], top.centers_b[0], disparity)

    scores = {'trained': score(model.eval())}
    random = []
    for seed in seeds:
        torch.manual_seed(seed)
        random.append(score(build_demo_encoder(**model.config).eval()))
    scores['random_init'] = random
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='out/demo_model', help='output directory')
    parser.add_argument('--steps', type=int, default=120)
    parser.add_argument('--batch', type=int, default=64, help='pairs per step (2 x batch crops)')
    parser.add_argument('--crop', type=int, default=48, help='side of the network input crops')
    parser.add_argument('--lr', type=float, default=3e-3)
    parser.add_argument('--temperature', type=float, default=0.2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--color', type=float, default=0.1,
                        help='color jitter strength (small: color stays informative, which matching needs)')
    parser.add_argument('--gray', type=float, default=0.0, help='probability of a gray view')
    parser.add_argument('--min-side', type=float, default=32, help='smallest crop side (pixels of the photo)')
    parser.add_argument('--max-side', type=float, default=160, help='largest crop side (pixels of the photo)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: OMP_NUM_THREADS)')
    parser.add_argument('--resume', action='store_true', help='continue from checkpoint_last.pt in --out')
    parser.add_argument('--no-eval', action='store_true', help='skip the correspondence scores at the end')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, sizes = load_images(longest=384)
    model = build_demo_encoder()
    for module in model.modules():  # He initialization keeps the activation scale of this norm-free ReLU network
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
    head = nn.Sequential(nn.Linear(model.embedding_dim, 128), nn.ReLU(), nn.Linear(128, 64))
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
    log = {'settings': vars(args), 'images': list(TRAIN_IMAGES), 'loss': []}
    start = 0
    last = out / 'checkpoint_last.pt'
    if args.resume and last.is_file():
        state = torch.load(last, weights_only=True)  # tensors, dicts and numbers only: no pickled code
        model.load_state_dict(state['model'])
        head.load_state_dict(state['head'])
        optimizer.load_state_dict(state['optimizer'])
        schedule.load_state_dict(state['schedule'])
        generator.set_state(state['generator'])
        log, start = state['log'], state['step']

    model.train()
    head.train()
    began = time.time()
    bar = tqdm(range(start, args.steps), desc='SimCLR', initial=start, total=args.steps)
    for step in bar:
        base = random_boxes(args.batch, sizes, min_side=args.min_side, max_side=args.max_side, generator=generator)
        views = []
        for _ in range(2):
            boxes = view_boxes(base, sizes, generator)
            crops = roi_align(images, boxes, output_size=args.crop, spatial_scale=1.0, sampling_ratio=2,
                              aligned=True)
            views.append(color_augment(crops, generator, strength=args.color, grey_p=args.gray))
        z = head(model(torch.cat(views)))
        loss = nt_xent(z[:args.batch], z[args.batch:], args.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        log['loss'].append(round(loss.item(), 5))
        bar.set_postfix(loss=f'{loss.item():.3f}')
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            torch.save({'model': model.state_dict(), 'head': head.state_dict(), 'optimizer': optimizer.state_dict(),
                        'schedule': schedule.state_dict(), 'generator': generator.get_state(), 'log': log,
                        'step': step + 1}, last)
    log['train_seconds'] = round(time.time() - began, 1)
    model.eval()
    torch.save({'state_dict': model.state_dict(), 'config': model.config,
                'meta': {'script': 'examples/train_demo_model.py', 'settings': vars(args),
                         'final_loss': log['loss'][-1] if log['loss'] else None}},
               out / 'demo_encoder.pt')
    if not args.no_eval:
        log['correspondence_top25'] = correspondence_scores(model)
        print('stereo correspondence error of the top-25 BiLRP pairs (pixels):', log['correspondence_top25'])
    (out / 'train_log.json').write_text(json.dumps(log, indent=1))
    print(f'wrote {out / "demo_encoder.pt"} and {out / "train_log.json"}')


if __name__ == '__main__':
    main()
