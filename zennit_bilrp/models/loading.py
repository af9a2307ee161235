"""Model loading without code execution: a model by name, its weights from a local state-dict file.

:func:`load_model` builds the model named ``'demo'`` (the shipped demo encoder), a torchvision model name, or a
Python factory ``package.module:callable`` (:func:`build_factory`), and loads weights from a local file with
``torch.load(weights_only=True)`` (:func:`read_state_dict`): files hold tensors, never code, so pickled whole models
are refused. Torchvision's pretrained weights (``'DEFAULT'``) are used only if they are already in the local torch
cache; nothing is downloaded. :func:`torchvision_preprocessing` gives the preprocessing of a torchvision model's
pretrained weights (``weights.transforms()``) without the weights file. :func:`sha256_file` is the checksum the
shipped loaders verify before reading a weights file.

Every failure raises :class:`ModelLoadError` (a ``ValueError``) with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

__all__ = ['ModelLoadError', 'MODEL_KINDS', 'load_model', 'build_factory', 'read_state_dict', 'load_weights',
           'torchvision_names', 'torchvision_weights', 'torchvision_preprocessing', 'load_torchvision_model',
           'sha256_file']

#: what :func:`load_model` reports as the kind of model it built
MODEL_KINDS = ('demo', 'torchvision', 'custom')
#: torchvision's names of pretrained weights that are looked up in the local cache
_PRETRAINED = ('DEFAULT', 'IMAGENET1K_V1', 'IMAGENET1K_V2')
_FACTORY = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$')


class ModelLoadError(ValueError):
    """A model or its weights cannot be loaded; the message says why and what to pass instead."""


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """The SHA-256 hex digest of the file at ``path`` (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Union[str, os.PathLike]) -> dict:
    """The state dict in the file ``path`` (also one stored under a ``'state_dict'``, ``'model_state_dict'`` or
    ``'model'`` key), read with ``torch.load(weights_only=True)`` on the CPU.

    Raises
    ------
    ModelLoadError
        If the file does not exist, holds more than tensors (e.g. a whole pickled model: it is not unpickled), or
        holds something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f'weights file {str(path)!r} does not exist')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(f'{str(path)!r} holds more than tensors (e.g. a whole pickled model), which is not '
                             'loaded; save model.state_dict() instead and name the architecture (--model)') from None
    except Exception as error:
        raise ModelLoadError(f'cannot load weights from {str(path)!r}: {error}') from None
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model_state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        return checkpoint
    raise ModelLoadError(f'{str(path)!r} holds a {type(checkpoint).__name__}, not a state dict')


def load_weights(model: nn.Module, weights: Union[str, os.PathLike], name: str) -> nn.Module:
    """Load the state dict file ``weights`` (:func:`read_state_dict`) into ``model`` (called ``name`` in errors).

    Weights that do not fit leave the model as it was (torch would have copied the tensors that fit).

    Raises
    ------
    ModelLoadError
        If the file cannot be read or its tensors do not fit the model.
    """
    state_dict = read_state_dict(weights)
    before = {key: value.detach().clone() for key, value in model.state_dict().items()}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        model.load_state_dict(before)
        raise ModelLoadError(f'the weights in {str(weights)!r} do not fit {name!r}: {str(error)[:300]}') from None
    return model


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

    Raises
    ------
    ModelLoadError
        If ``spec`` is malformed, the module cannot be imported, the callable is missing, fails or returns no
        module.
    """
    if not _FACTORY.match(spec):
        raise ModelLoadError(f'model {spec!r} is not of the form package.module:callable')
    module_name, attribute = spec.split(':')
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(f'cannot import {module_name!r} for the model {spec!r}: {error}') from None
    for part in attribute.split('.'):
        if not hasattr(target, part):
            raise ModelLoadError(f'{module_name!r} has no attribute {attribute!r} (model {spec!r})')
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f'model {spec!r} names a {type(target).__name__}, not a callable')
    try:
        model = target()
    except Exception as error:
        raise ModelLoadError(f'calling {spec}() failed: {type(error).__name__}: {error}') from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f'{spec}() returned a {type(model).__name__}, not a torch.nn.Module')
    return model


def torchvision_names() -> list[str]:
    """The model names torchvision builds (``torchvision.models.list_models()``), sorted."""
    from torchvision.models import list_models

    return sorted(list_models())


def torchvision_weights(name: str, weights: str = 'DEFAULT'):
    """The entry ``weights`` (``'DEFAULT'``, ``'IMAGENET1K_V1'``, ...) of the torchvision model ``name``'s weights
    enum (URL, preprocessing and metadata; no file is read).

    Raises
    ------
    ModelLoadError
        If torchvision has no such weights for ``name``.
    """
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
        return enum.DEFAULT if weights.upper() == 'DEFAULT' else enum[weights.upper()]
    except (ValueError, KeyError):
        raise ModelLoadError(f'torchvision has no weights {weights!r} for {name!r}') from None


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

    Raises
    ------
    ModelLoadError
        If torchvision has no such weights (and so no preprocessing) for ``name``.
    """
    try:
        return torchvision_weights(name, weights).transforms()
    except ModelLoadError as error:
        raise ModelLoadError(f'{error} (and so no preprocessing)') from None


def _cached_pretrained(name: str, weights: str) -> Path:
    """The local torch-cache file of torchvision's pretrained ``weights`` for ``name`` (never downloaded)."""
    spec = torchvision_weights(name, weights)
    filename = Path(spec.url).name
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / filename
    if not cached.is_file():
        raise ModelLoadError(
            f"pretrained weights {spec} for {name!r} are not available offline (nothing is downloaded). Get "
            f'{spec.url} on a machine with internet access and pass the file as the weights (--weights '
            f'/path/to/{filename}), or copy it to {cached}'
        )
    return cached


def load_torchvision_model(name: str, weights: Optional[str] = None) -> nn.Module:
    """The torchvision model ``name`` (random weights), with ``weights`` loaded: a state dict file, or
    torchvision's pretrained ``'DEFAULT'``/``'IMAGENET1K_V1'``/``'IMAGENET1K_V2'`` from the local torch cache.

    Raises
    ------
    ModelLoadError
        If the pretrained weights are not in the cache (with the URL to fetch elsewhere), or the file cannot be
        read or does not fit.
    """
    from torchvision.models import get_model

    model = get_model(name, weights=None)
    if weights is not None and weights.upper() in _PRETRAINED:
        weights = str(_cached_pretrained(name, weights))
    if weights is not None:
        load_weights(model, weights, name)
    return model


def load_model(name: str = 'demo', weights: Optional[str] = None) -> tuple[nn.Module, str]:
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
        ``(model, kind)`` with ``kind`` one of :data:`MODEL_KINDS`; the model is in eval mode.

    Raises
    ------
    ModelLoadError
        For an unknown name, a model file instead of a name (whole pickled models are never loaded), or weights
        that cannot be read or do not fit.
    """
    if name == 'demo':
        from .demo import load_demo_model

        if weights is not None and weights.upper() == 'DEFAULT':
            weights = None
        try:
            return load_demo_model(weights), 'demo'
        except (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
            raise ModelLoadError(str(error)) from None
    if name in torchvision_names():
        return load_torchvision_model(name, weights).eval(), 'torchvision'
    if ':' in name and not os.path.exists(name):
        model = build_factory(name)
        if weights is not None:
            load_weights(model, weights, name)
        return model.eval(), 'custom'
    if Path(name).suffix in ('.pt', '.pth', '.ckpt', '.bin') or os.path.exists(name):
        raise ModelLoadError(f'model {name!r} is a file: whole pickled models are not loaded (unpickling runs '
                             'arbitrary code). Name the architecture (a torchvision name or a factory '
                             f'package.module:callable) and pass the state dict as the weights (--weights {name})')
    close = [n for n in torchvision_names() if n.startswith(name[:4])][:8]
    raise ModelLoadError(f"unknown model {name!r}: use 'demo', a torchvision model name"
                         f"{' (e.g. ' + ', '.join(close) + ')' if close else ''} or a factory package.module:callable")
