"""The ``zennit-bilrp explain`` command: the BiLRP picture of two image files under a named model, offline.

The model comes from :func:`~zennit_bilrp.models.loading.load_model` (``demo``, a torchvision name or a factory
``package.module:callable``; weights from a local state-dict file), the images from
:func:`~zennit_bilrp.models.preprocessing.load_image` (torchvision models: the preprocessing of their pretrained
weights), the rules from a Zennit composite name (:func:`make_composite`). The command checks every argument before
a model is loaded, prints the predicted cost before the long part, and writes the figure
(:func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp`) and optionally the whole result.
"""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core.similarity import named_similarities
from ..lrp.composites import vgg_feature_indices
from ..lrp.layers import LayerEmbedding
from ..lrp.preset_parts import IMAGENET_MEAN, IMAGENET_STD
from ..models.loading import ModelLoadError, load_model, torchvision_preprocessing
from ..models.preprocessing import image_size, load_image, normalize
from .cli_support import (
    CLIError,
    add_output_arguments,
    check_dpi,
    check_out,
    check_patch,
    check_positive,
    device,
    log,
    pairs_to_draw,
    result_to_cpu,
    user_errors,
)

__all__ = ['add_explain_parser', 'explain', 'make_composite', 'check_composite_name', 'NON_LRP_COMPOSITES',
           'DTYPES']

#: composites that are not LRP (their relevance is not linear in the output relevance)
NON_LRP_COMPOSITES = ('guided_backprop', 'deconvnet')
#: the ``--dtype`` choices
DTYPES = {'float32': torch.float32, 'float64': torch.float64}
#: what a missing or unreadable file, model or weights raise in the library
_LOAD_ERRORS = (ModelLoadError, FileNotFoundError, ValueError)


def check_composite_name(name: Optional[str]) -> None:
    """Raise a :class:`~zennit_bilrp.app.cli_support.CLIError` unless ``name`` is ``None`` or a registered LRP
    composite."""
    from zennit.composites import COMPOSITES

    from ..lrp import composites  # noqa: F401  (registers 'bilrp_gamma' and 'depth_gamma')

    if name is None:
        return
    if name in NON_LRP_COMPOSITES:
        raise CLIError(f"composite {name!r} is not an LRP composite (its relevance is not linear in the output "
                       'relevance, which BiLRP needs)')
    if name not in COMPOSITES:
        options = ', '.join(sorted(n for n in COMPOSITES if n not in NON_LRP_COMPOSITES))
        raise CLIError(f'unknown composite {name!r}; choose one of: {options}')


def make_composite(name: Optional[str], model: nn.Module, kind: str, low=0.0, high=1.0):
    """A Zennit composite by registered name (``None``: :func:`~zennit_bilrp.lrp.choose.composite_for` with the
    input bounds ``low``/``high``; the demo encoder's own for the demo model), with canonizers for ``model``.

    ``'bilrp_gamma'`` is the BiLRP paper's VGG preset (biases kept, as the authors do; only for models with a VGG
    ``features`` block); every other composite gets ``zero_params=['bias']`` and the input bounds ``low``/``high``
    where it takes them (``'depth_gamma'`` and the default: :math:`z^{\\mathcal{B}}` in the first layer).
    """
    from zennit.composites import COMPOSITES

    from ..lrp.canonizers import canonizers_for
    from ..lrp.choose import composite_for
    from ..lrp.composites import BiLRPGamma
    from ..models.demo import demo_composite

    check_composite_name(name)
    canonizers = canonizers_for(model)
    if name is None:
        if kind == 'demo':
            return demo_composite(model)
        return composite_for(model, bounds=(low, high), canonizers=canonizers)
    if name == 'bilrp_gamma':
        if not vgg_feature_indices(model):
            raise CLIError("--composite bilrp_gamma is the BiLRP paper's VGG preset and needs a model with a VGG "
                           "'features' block (e.g. --model vgg16); use depth_gamma for other models")
        return BiLRPGamma(low=low, high=high, canonizers=canonizers)
    cls = COMPOSITES[name]
    params = inspect.signature(cls).parameters
    kwargs = {'canonizers': canonizers}
    if 'zero_params' in params:
        kwargs['zero_params'] = ['bias']
    if 'low' in params and 'high' in params:
        kwargs.update(low=low, high=high)
    if name == 'depth_gamma':
        kwargs['first'] = 'zbox'
    return cls(**kwargs)


def explain(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp explain``: check every argument, load the model and images, explain, write the figure."""
    _check_explain_arguments(args)
    target, dtype = device(args.device), DTYPES[args.dtype]
    log(f'loading model {args.model!r}')
    with user_errors(*_LOAD_ERRORS):
        model, kind = load_model(args.model, args.weights)
    transform = _preprocessing(args.model, kind)
    size = _explained_size(args, model, kind, transform)
    top_k = pairs_to_draw(args.top_k, args.threshold, size, args.patch)
    model = _embedding_model(model, kind, args.layer)
    crop = transform if transform is not None and args.size is None else None
    with user_errors(*_LOAD_ERRORS):
        x_a, x_b = load_image(args.image_a, size, crop), load_image(args.image_b, size, crop)
    inputs, (low, high) = _model_inputs(kind, x_a.to(dtype), x_b.to(dtype), transform)
    composite = make_composite(args.composite, model, kind, low=low, high=high)
    model = model.to(device=target, dtype=dtype)
    inputs = [x.to(target) for x in inputs]
    head = _resolve_head(args.head, _probe(model, inputs[0], args.model, size))
    log(f'explaining: {args.similarity} similarity, {head} head, {size[0]} x {size[1]} pixels, '
        f'{args.patch}-pixel patches, {args.dtype}, strict={args.strict}')
    from ..core.engine import BiLRP

    with user_errors(TypeError, ValueError), BiLRP(
            model, composite=composite, similarity=args.similarity, head=head, progress=True,
            chunk_size=args.chunk_size, strict=args.strict) as bilrp:
        _log_cost(bilrp, inputs, args.patch)
        result = result_to_cpu(bilrp(inputs[0], inputs[1], pooling=args.patch))
    if args.save_relevance is not None:
        _save_relevance(args, result, bilrp, size)
    return _write_explanation(args, result, x_a, x_b, top_k)


def _preprocessing(name: str, kind: str):
    """The torchvision weights' preprocessing of a torchvision model (None for other models, or a torchvision model
    without pretrained weights: then ImageNet's constants are used)."""
    if kind != 'torchvision':
        return None
    try:
        return torchvision_preprocessing(name)
    except ModelLoadError:
        return None


def _log_cost(bilrp, inputs: list, patch: int) -> None:
    """Print the predicted cost before the long part: the engine's plan (path, passes) when it has one, else
    units x passes of the unit-major path."""
    plan = getattr(bilrp, 'plan', None)
    if callable(plan):
        chosen = plan(inputs[0], inputs[1], pooling=patch)
        kind = 'LRP' if chosen.path == 'units' else 'second-order'
        seconds = f', about {chosen.seconds:.0f} s' if getattr(chosen, 'seconds', None) else ''
        path = {'units': 'unit-major', 'patches': 'patch-major'}.get(chosen.path, chosen.path)
        log(f'cost estimate: {chosen.passes} {kind} backward passes ({path} path: {chosen.units} embedding units, '
            f'{chosen.patches} patches; {chosen.reason}) + 2 for the marginals{seconds}')
        return
    units = int(bilrp.embed(inputs[0][:1]).shape[1])
    log(f'cost estimate: {units} embedding units x 1 LRP backward pass = {units} passes (+ 2 for the marginals)')


def _save_relevance(args: argparse.Namespace, result, bilrp, size: tuple) -> None:
    from ..core.results import describe_run

    meta = describe_run(bilrp, model_name=args.model, weights=args.weights, layer=args.layer,
                        composite_name=args.composite or 'default', images=[args.image_a, args.image_b],
                        size=list(size), patch=args.patch, dtype=args.dtype)
    path = result.save(args.save_relevance, metadata=meta)
    print(f'wrote {path}')


def _check_explain_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked before a model is loaded."""
    check_positive(args.patch, '--patch', 'a positive number of pixels')
    check_positive(args.top_k, '--top-k')
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise CLIError(f'--threshold must be in (0, 1], got {args.threshold}')
    check_positive(args.chunk_size, '--chunk-size')
    check_dpi(args.dpi)
    check_out(args.out)
    if args.save_relevance is not None and Path(args.save_relevance).suffix != '.npz':
        raise CLIError(f'--save-relevance {args.save_relevance!r}: the file name must end in .npz')
    device(args.device)
    with user_errors(*_LOAD_ERRORS):
        for path in (args.image_a, args.image_b):
            image_size(path)  # fail early on unreadable images
    if args.size is not None:
        check_patch(args.patch, tuple(args.size))
    check_composite_name(args.composite)


def _expected_size(model: nn.Module) -> Optional[tuple]:
    """The input size a model insists on (torchvision's vision transformers have ``image_size``), if any."""
    value = getattr(model, 'image_size', None)
    return (value, value) if isinstance(value, int) and not isinstance(value, bool) else None


def _explained_size(args: argparse.Namespace, model: nn.Module, kind: str, transform=None) -> tuple:
    """The (H, W) both images are resized to: ``--size``, else the model's own size, else the crop of its
    torchvision preprocessing ``transform``, else a default height (224, 128 for the demo model) and the width by
    the aspect of IMG_A, a multiple of the patch."""
    from ..models.demo import DEMO_SIZE

    expected = _expected_size(model)
    if args.size is not None:
        size = tuple(args.size)
        if expected is not None and size != expected:
            raise CLIError(f'model {args.model!r} takes {expected[0]} x {expected[1]} images only, got --size '
                           f'{size[0]} {size[1]}; pass --size {expected[0]} {expected[1]} (or leave --size out)')
    elif expected is not None:
        size = expected
    elif transform is not None:
        crop = list(transform.crop_size)
        size = (int(crop[0]), int(crop[-1]))
    else:
        height = DEMO_SIZE[0] if kind == 'demo' else 224
        h_a, w_a = image_size(args.image_a)
        size = (height, max(args.patch, int(round(height * w_a / h_a / args.patch)) * args.patch))
    check_patch(args.patch, size)
    return size


def _embedding_model(model: nn.Module, kind: str, layer: Optional[str]) -> nn.Module:
    """``model``, truncated at ``layer`` (torchvision models default to ``'avgpool'`` where they have one)."""
    if layer is None and kind == 'torchvision' and 'avgpool' in dict(model.named_modules()):
        layer = 'avgpool'
    if layer is None:
        return model
    with user_errors(ValueError):
        return LayerEmbedding(model, layer)


def _model_inputs(kind: str, x_a: torch.Tensor, x_b: torch.Tensor, transform=None) -> tuple:
    r"""The model inputs (normalized for torchvision models, with the mean/std of their weights' ``transform``,
    ImageNet's without one) and the bounds of their pixels, :math:`((0 - \mu)/\sigma, (1 - \mu)/\sigma)` or
    :math:`(0, 1)`."""
    if kind != 'torchvision':
        return [x_a, x_b], (0.0, 1.0)
    stats = transform if transform is not None else (IMAGENET_MEAN, IMAGENET_STD)
    (n_a, bounds), (n_b, _) = normalize(x_a, stats), normalize(x_b, stats)
    return [n_a, n_b], bounds


def _probe(model: nn.Module, x: torch.Tensor, name: str, size: tuple) -> torch.Tensor:
    """One forward pass of ``x``, turning a model's refusal of the input (an assertion or a shape error) into a
    clear error."""
    try:
        with torch.no_grad():
            return model(x)
    except (AssertionError, RuntimeError, ValueError) as error:
        raise CLIError(f'model {name!r} cannot take {size[0]} x {size[1]} images: {type(error).__name__}: '
                       f'{str(error)[:300]}; choose another --size') from None


def _resolve_head(head: str, probe: torch.Tensor) -> str:
    if head == 'auto':
        head = 'none' if probe.dim() == 2 else 'avg'
    log(f'embedding {tuple(probe.shape[1:])}')
    return head


def _write_explanation(args: argparse.Namespace, result, x_a: torch.Tensor, x_b: torch.Tensor, top_k: int) -> Path:
    from . import viz

    similarity, total = float(result.similarity[0]), float(result.relevance.sum())
    fig = viz.plot_bilrp(result, x_a, x_b, k=top_k, threshold=args.threshold, background=args.background,
                         title=f'{Path(args.image_a).name} vs {Path(args.image_b).name}: y = {similarity:.3f} '
                               f'({args.similarity}), sum R = {total:.3f}')
    out = viz.save_figure(fig, args.out, dpi=args.dpi)
    log(f'similarity {similarity:.4f}, sum of R {total:.4f}')
    print(f'wrote {out}')
    return out


def add_explain_parser(sub) -> None:
    """Add the ``explain`` sub-command to the ``zennit-bilrp`` sub-parsers ``sub``."""
    ex = sub.add_parser('explain', help='explain the similarity of two images',
                        description='Explain why a model finds two images similar; writes a BiLRP figure.')
    ex.add_argument('image_a', metavar='IMG_A', help='the first image file (any format Pillow reads)')
    ex.add_argument('image_b', metavar='IMG_B', help='the second image file, compared with IMG_A')
    ex.add_argument('--model', default='demo',
                    help="'demo' (default), a torchvision model name, or package.module:callable, a Python factory "
                         'returning the model (its weights from --weights)')
    ex.add_argument('--weights', default=None,
                    help="a state dict file (loaded with weights_only=True); DEFAULT: torchvision's pretrained "
                         'weights from the local cache (no download)')
    ex.add_argument('--layer', default=None, help="submodule whose output is the embedding (torchvision default "
                                                  "'avgpool')")
    ex.add_argument('--head', default='auto', choices=['auto', 'none', 'avg', 'sum', 'max', 'flatten'],
                    help='feature map to embedding (auto: avg for feature maps)')
    ex.add_argument('--similarity', default='cosine', choices=named_similarities(), help='similarity of the embeddings')
    ex.add_argument('--composite', default=None,
                    help='a Zennit composite name, e.g. epsilon_plus, epsilon_gamma_box, depth_gamma, or bilrp_gamma '
                         "(the BiLRP paper's VGG rules, models with a VGG 'features' block) (default: recommended)")
    ex.add_argument('--patch', type=int, default=8, help='patch size in pixels (must divide the image size)')
    ex.add_argument('--top-k', type=int, default=20,
                    help='number of patch pairs drawn (at most the number of pairs; default 20)')
    ex.add_argument('--threshold', type=float, default=None, help='draw all pairs with |R| >= T max|R| instead')
    ex.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                    help="resize both images to H x W (default: the model's own input size if it has one, else "
                         'height 224, or 128 for the demo model, and the width by the aspect of IMG_A, a multiple '
                         'of the patch size)')
    ex.add_argument('--chunk-size', type=int, default=None, help='embedding units per batched backward pass')
    add_output_arguments(ex, 'bilrp.png', 150)
    ex.add_argument('--save-relevance', default=None, metavar='FILE.npz',
                    help='also write the result (relevance, similarity, factors, patch grids, marginals and metadata) '
                         'to an NPZ file, read back with zennit_bilrp.BiLRPResult.load')
    ex.add_argument('--strict', action=argparse.BooleanOptionalAction, default=True,
                    help='refuse layers the LRP rules cannot explain (default); --no-strict explains anyway')
    ex.add_argument('--dtype', default='float32', choices=sorted(DTYPES),
                    help='floating-point type of model and inputs (default float32)')
    ex.set_defaults(run=explain)

