"""The ``zennit-bilrp`` command: BiLRP pictures from image files, offline.

::

    zennit-bilrp explain IMG_A IMG_B [--model NAME|PATH] [--weights PATH|DEFAULT] [--layer NAME]
                         [--similarity dot|cosine] [--composite NAME] [--patch N] [--top-k K | --threshold T]
                         [--size H W] [--out FILE] [--device cpu|cuda] [--background light|dark]
    zennit-bilrp demo [--out FILE]

Models: ``demo`` (the shipped offline demo encoder, default), any torchvision model name (random weights unless
``--weights`` is given; ``--weights DEFAULT`` uses torchvision's pretrained weights only if they are already in
the local torch cache, nothing is downloaded), or the path of a full model saved with ``torch.save(model)``.
``--weights PATH`` loads a state dict (or a full model) from a file. ``--layer NAME`` makes the output of the
submodule ``NAME`` the embedding (one forward that stops right after that module).
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..lrp.layers import LayerEmbedding

__all__ = ['main', 'build_parser', 'load_model', 'load_image', 'make_composite', 'CLIError']

#: composites that are not LRP (their relevance is not linear in the output relevance)
NON_LRP_COMPOSITES = ('guided_backprop', 'deconvnet')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CLIError(Exception):
    """A user error: printed as ``zennit-bilrp: error: ...`` with exit status 2."""


# ---------------------------------------------------------------------------------------------- loading
def load_image(path: str, size: Optional[tuple] = None) -> torch.Tensor:
    """Read an image file as a float32 tensor ``(1, 3, H, W)`` in [0, 1], resized to ``size = (H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert('RGB')
            if size is not None:
                image = image.resize((int(size[1]), int(size[0])), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise CLIError(f'cannot read image {path!r}: no such file') from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise CLIError(f'cannot read image {path!r}: {error}') from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous()


def image_size(path: str) -> tuple:
    """(height, width) of an image file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except FileNotFoundError:
        raise CLIError(f'cannot read image {path!r}: no such file') from None
    except (UnidentifiedImageError, OSError) as error:
        raise CLIError(f'cannot read image {path!r}: {error}') from None


def _torchvision_names() -> list:
    from torchvision.models import list_models

    return sorted(list_models())


def _read_checkpoint(path: Path):
    if not path.is_file():
        raise CLIError(f'weights file {str(path)!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise CLIError(f'cannot load weights from {str(path)!r}: {error}') from None


def _state_dict_of(checkpoint):
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model_state_dict', 'model'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                return checkpoint[key]
        return checkpoint
    raise CLIError(f'unsupported checkpoint content of type {type(checkpoint).__name__}')


def _pretrained_error(name: str, weights) -> CLIError:
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / filename
    return CLIError(
        f"pretrained weights {weights} for {name!r} are not available offline (nothing is downloaded). Get "
        f"{weights.url} on a machine with internet access and pass it with --weights /path/to/{filename} "
        f"(or copy it to {cached})"
    )


def load_model(name: str = 'demo', weights: Optional[str] = None) -> tuple:
    """Build the model named ``name`` and load ``weights``.

    Returns
    -------
    tuple
        ``(model, kind)`` with ``kind`` one of ``'demo'``, ``'torchvision'`` or ``'custom'``; the model is in eval
        mode.
    """
    if name == 'demo':
        from ..models.demo import load_demo_model

        if weights is not None and weights.upper() == 'DEFAULT':
            weights = None
        try:
            return load_demo_model(weights), 'demo'
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            raise CLIError(str(error)) from None
    if name in _torchvision_names():
        from torchvision.models import get_model, get_model_weights

        model = get_model(name, weights=None)
        if weights is not None and weights.upper() in ('DEFAULT', 'IMAGENET1K_V1', 'IMAGENET1K_V2'):
            try:
                enum = get_model_weights(name)
                spec = enum.DEFAULT if weights.upper() == 'DEFAULT' else enum[weights.upper()]
            except (ValueError, KeyError):
                raise CLIError(f'torchvision has no pretrained weights {weights!r} for {name!r}') from None
            cached = Path(torch.hub.get_dir()) / 'checkpoints' / Path(spec.url).name
            if not cached.is_file():
                raise _pretrained_error(name, spec)
            weights = str(cached)
        if weights is not None:
            checkpoint = _read_checkpoint(Path(weights))
            if isinstance(checkpoint, nn.Module):
                model = checkpoint
            else:
                try:
                    model.load_state_dict(_state_dict_of(checkpoint))
                except RuntimeError as error:
                    raise CLIError(f'the weights in {weights!r} do not fit {name!r}: {str(error)[:300]}') from None
        return model.eval(), 'torchvision'
    path = Path(name)
    if path.suffix in ('.pt', '.pth', '.ckpt', '.bin') or path.exists():
        checkpoint = _read_checkpoint(path)
        if not isinstance(checkpoint, nn.Module):
            raise CLIError(f'{name!r} holds a state dict, not a full model; pass the architecture with --model NAME '
                           f'and the file with --weights {name}')
        if weights is not None:
            raise CLIError('--weights cannot be combined with a full model file given as --model')
        return checkpoint.eval(), 'custom'
    names = _torchvision_names()
    close = [n for n in names if n.startswith(name[:4])][:8]
    raise CLIError(f"unknown model {name!r}: use 'demo', a torchvision model name"
                   f"{' (e.g. ' + ', '.join(close) + ')' if close else ''} or the path of a saved full model")


def check_composite_name(name: Optional[str]) -> None:
    """Raise a :class:`CLIError` unless ``name`` is ``None`` or a registered LRP composite."""
    from zennit.composites import COMPOSITES

    from ..lrp import composites  # noqa: F401  (registers 'bilrp_gamma')

    if name is None:
        return
    if name in NON_LRP_COMPOSITES:
        raise CLIError(f"composite {name!r} is not an LRP composite (its relevance is not linear in the output "
                       'relevance, which BiLRP needs)')
    if name not in COMPOSITES:
        options = ', '.join(sorted(n for n in COMPOSITES if n not in NON_LRP_COMPOSITES))
        raise CLIError(f'unknown composite {name!r}; choose one of: {options}')


def make_composite(name: Optional[str], model: nn.Module, kind: str, low=0.0, high=1.0):
    """A Zennit composite by registered name (``None``: the recommended one), with canonizers for ``model``,
    ``zero_params=['bias']`` and the input bounds where the composite takes them."""
    from zennit.composites import COMPOSITES

    from ..lrp.canonizers import canonizers_for
    from ..lrp.composites import BiLRPGamma
    from ..models.demo import demo_composite

    check_composite_name(name)
    if name is None:
        if kind == 'demo':
            return demo_composite(model)
        return BiLRPGamma(first='zbox', low=low, high=high, zero_params=['bias'], canonizers=canonizers_for(model))
    cls = COMPOSITES[name]
    params = inspect.signature(cls).parameters
    kwargs = {'canonizers': canonizers_for(model)}
    if 'zero_params' in params:
        kwargs['zero_params'] = ['bias']
    if 'low' in params and 'high' in params:
        kwargs.update(low=low, high=high)
    if name == 'bilrp_gamma':
        kwargs.update(first='zbox', low=low, high=high)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- commands
def _device(name: str) -> torch.device:
    if name == 'cuda' and not torch.cuda.is_available():
        raise CLIError('--device cuda requested but CUDA is not available; use --device cpu')
    return torch.device(name)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def explain(args) -> Path:
    """Run ``zennit-bilrp explain``."""
    from .. import BiLRP
    from ..models.demo import DEMO_SIZE
    from .viz import plot_bilrp, save_figure

    if args.patch < 1:
        raise CLIError(f'--patch must be a positive number of pixels, got {args.patch}')
    if args.top_k < 1:
        raise CLIError(f'--top-k must be positive, got {args.top_k}')
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise CLIError(f'--threshold must be in (0, 1], got {args.threshold}')
    _check_out(args.out)
    device = _device(args.device)
    for path in (args.image_a, args.image_b):
        image_size(path)  # fail early on unreadable images
    if args.size is not None:
        _check_patch(args.patch, tuple(args.size))
    check_composite_name(args.composite)
    _log(f'loading model {args.model!r}')
    model, kind = load_model(args.model, args.weights)
    if args.size is not None:
        size = tuple(args.size)
    else:
        height = DEMO_SIZE[0] if kind == 'demo' else 224
        h_a, w_a = image_size(args.image_a)
        width = max(args.patch, int(round(height * w_a / h_a / args.patch)) * args.patch)
        size = (height, width)
    _check_patch(args.patch, size)
    x_a, x_b = load_image(args.image_a, size), load_image(args.image_b, size)
    layer = args.layer
    if layer is None and kind == 'torchvision' and 'avgpool' in dict(model.named_modules()):
        layer = 'avgpool'
    if layer is not None:
        try:
            model = LayerEmbedding(model, layer)
        except ValueError as error:
            raise CLIError(str(error)) from None
    normalize = kind == 'torchvision'
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    low, high = ((0 - mean) / std, (1 - mean) / std) if normalize else (0.0, 1.0)
    inputs = [((x - mean) / std) if normalize else x for x in (x_a, x_b)]
    composite = make_composite(args.composite, model, kind, low=low, high=high)
    model = model.to(device)
    inputs = [x.to(device) for x in inputs]
    with torch.no_grad():
        probe = model(inputs[0])
    head = args.head
    if head == 'auto':
        head = 'none' if probe.dim() == 2 else 'avg'
    _log(f'explaining: embedding {tuple(probe.shape[1:])} ({head} head), {args.similarity} similarity, '
         f'{size[0]} x {size[1]} pixels, {args.patch}-pixel patches')
    try:
        with BiLRP(model, composite=composite, similarity=args.similarity, head=head, progress=True,
                   chunk_size=args.chunk_size) as bilrp:
            result = bilrp(inputs[0], inputs[1], pooling=args.patch)
    except (TypeError, ValueError) as error:
        raise CLIError(str(error)) from None
    result = _to_cpu(result)
    fig = plot_bilrp(result, x_a, x_b, k=args.top_k, threshold=args.threshold, background=args.background,
                     title=f'{Path(args.image_a).name} vs {Path(args.image_b).name}: y = '
                           f'{float(result.similarity[0]):.3f} ({args.similarity}), sum R = '
                           f'{float(result.relevance.sum()):.3f}')
    out = save_figure(fig, args.out, dpi=args.dpi)
    _log(f'similarity {float(result.similarity[0]):.4f}, sum of R {float(result.relevance.sum()):.4f}')
    print(f'wrote {out}')
    return out


def _check_patch(patch: int, size: tuple) -> None:
    if size[0] < 1 or size[1] < 1:
        raise CLIError(f'--size must be positive, got {size[0]} x {size[1]}')
    if size[0] % patch or size[1] % patch:
        raise CLIError(f'--patch {patch} does not divide the image size {size[0]} x {size[1]}; choose a patch '
                       'size that divides both (or a matching --size)')


def _to_cpu(result):
    for name in ('relevance', 'similarity', 'marginal_a', 'marginal_b'):
        value = getattr(result, name)
        if value is not None:
            setattr(result, name, value.detach().cpu())
    result.factors_a = result.factors_a.to('cpu')
    result.factors_b = result.factors_b.to('cpu')
    return result


def _check_out(out: str) -> None:
    from .viz import SAVE_FORMATS

    if Path(out).suffix.lower() not in SAVE_FORMATS:
        raise CLIError(f'--out {out!r}: the file name must end in one of {", ".join(SAVE_FORMATS)}')


def demo(args) -> Path:
    """Run ``zennit-bilrp demo``: the stereo pair and a second pair through the shipped demo model."""
    from .. import BiLRP
    from ..models.demo import (
        DEMO_PATCH,
        DEMO_SIMILARITY,
        SANITY_K,
        correspondence_error,
        demo_composite,
        load_demo_disparity,
        load_demo_model,
        load_demo_pair,
        load_second_pair,
    )
    from .viz import _as_image, _bilrp_figsize, _new_figure, plot_bilrp, save_figure

    _check_out(args.out)
    device = _device(args.device)
    try:
        model = load_demo_model(args.weights).to(device)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from None
    pairs = [('stereo pair (scikit-image stereo_motorcycle, left vs right)', *load_demo_pair()),
             ('astronaut vs a zoomed, mirrored crop of it', *load_second_pair())]
    _log('explaining 2 image pairs with the demo model')
    with BiLRP(model, composite=demo_composite(model), similarity=DEMO_SIMILARITY, progress=True) as bilrp:
        results = [_to_cpu(bilrp(x_a.to(device), x_b.to(device), pooling=DEMO_PATCH)) for _, x_a, x_b in pairs]
    top = results[0].top_pairs(SANITY_K)
    error = correspondence_error(top.centers_a[0], top.centers_b[0], load_demo_disparity())
    titles = [f'{label}\ncosine y = {float(result.similarity[0]):.3f}, sum R = {float(result.relevance.sum()):.3f}, '
              f'top {args.top_k} patch pairs (red +, blue -)' for (label, _, _), result in zip(pairs, results)]
    # each pair gets exactly the height its images and titles need: no empty band between the two pictures
    heights = [_bilrp_figsize(_as_image(x_a, name='x_a').shape[:2], _as_image(x_b, name='x_b').shape[:2],
                              title=title)[1] for (_, x_a, x_b), title in zip(pairs, titles)]
    fig = _new_figure(None, (7.0, sum(heights) + 0.1), args.background)
    subfigs = fig.subfigures(3, 1, height_ratios=[heights[0], 0.1, heights[1]], hspace=0)
    for subfig, (_, x_a, x_b), result, title in zip(subfigs[::2], pairs, results, titles):
        plot_bilrp(result, x_a, x_b, k=args.top_k, fig=subfig, background=args.background, title=title)
    out = save_figure(fig, args.out, dpi=args.dpi)
    print(f'stereo pair: mean distance of the top-{SANITY_K} BiLRP pairs from the true correspondence '
          f'{error:.1f} px (of 128 x 192)')
    print(f'wrote {out}')
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zennit-bilrp``."""
    parser = argparse.ArgumentParser(prog='zennit-bilrp', description='BiLRP explanations of image similarity.')
    sub = parser.add_subparsers(dest='command', required=True)

    ex = sub.add_parser('explain', help='explain the similarity of two images',
                        description='Explain why a model finds two images similar; writes a BiLRP figure.')
    ex.add_argument('image_a', metavar='IMG_A')
    ex.add_argument('image_b', metavar='IMG_B')
    ex.add_argument('--model', default='demo', help="'demo' (default), a torchvision model name, or a saved full "
                                                    'model (torch.save(model))')
    ex.add_argument('--weights', default=None, help="state dict or full model file; DEFAULT: torchvision's "
                                                    'pretrained weights from the local cache (no download)')
    ex.add_argument('--layer', default=None, help="submodule whose output is the embedding (torchvision default "
                                                  "'avgpool')")
    ex.add_argument('--head', default='auto', choices=['auto', 'none', 'avg', 'sum', 'max', 'flatten'],
                    help='feature map to embedding (auto: avg for feature maps)')
    ex.add_argument('--similarity', default='cosine', choices=['dot', 'cosine'])
    ex.add_argument('--composite', default=None, help='a Zennit composite name, e.g. epsilon_plus, '
                                                      'epsilon_gamma_box, bilrp_gamma (default: recommended)')
    ex.add_argument('--patch', type=int, default=8, help='patch size in pixels (must divide the image size)')
    ex.add_argument('--top-k', type=int, default=20, help='number of patch pairs drawn')
    ex.add_argument('--threshold', type=float, default=None, help='draw all pairs with |R| >= T max|R| instead')
    ex.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                    help='resize both images to H x W (default: height 224, or 128 for the demo model, width '
                         'by the aspect of IMG_A, a multiple of the patch size)')
    ex.add_argument('--chunk-size', type=int, default=None, help='embedding units per batched backward pass')
    ex.add_argument('--out', default='bilrp.png', help='output figure (.png, .svg or .pdf)')
    ex.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ex.add_argument('--background', default='light', choices=['light', 'dark'])
    ex.add_argument('--dpi', type=int, default=150)

    de = sub.add_parser('demo', help='offline demo: the stereo pair and a second pair through the demo model')
    de.add_argument('--out', default='bilrp_demo.png', help='output figure (.png, .svg or .pdf)')
    de.add_argument('--weights', default=None, help='demo-model checkpoint (default: the shipped weights)')
    de.add_argument('--top-k', type=int, default=25)
    de.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    de.add_argument('--background', default='light', choices=['light', 'dark'])
    de.add_argument('--dpi', type=int, default=120)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``zennit-bilrp``; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == 'explain':
            explain(args)
        else:
            demo(args)
    except CLIError as error:
        print(f'zennit-bilrp: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
