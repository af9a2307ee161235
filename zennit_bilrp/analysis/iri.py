r"""Identically represented inputs (IRIs): generation, shared-invariance measures and BiLRP explanations.

An IRI of a reference image :math:`x_\mathrm{ref}` at layer :math:`g` of a model is an image :math:`x'` with
:math:`g(x') \approx g(x_\mathrm{ref})`, found by gradient descent from a starting point :math:`x_0`. Following
Nanda et al., "Do Invariances in Deep Neural Networks Align with Human Perception?" (AAAI 2023), the objective is

.. math::

    L(x) = \frac{\|g(T(x)) - g(x_\mathrm{ref})\|_2}{\|g(x_\mathrm{ref})\|_2}
           + \sum_k \lambda_k \, \mathrm{reg}_k(x) - c \, D(x, x_\mathrm{ref}),

with optional image regularizers :math:`\mathrm{reg}_k` (:class:`TotalVariation`, :class:`Blur`, :class:`L1Center`,
:class:`LpNorm`), optional random robustness transforms :math:`T` (:class:`RandomTransforms`) and, for the
*adversarial* IRIs of the paper, :math:`c > 0` with a perceptual distance :math:`D`
(:mod:`zennit_bilrp.analysis.perceptual`) that pushes :math:`x'` away from the reference while its representation is
matched. It is minimized by normalized gradient descent
:math:`x \leftarrow \mathrm{clip}_{[0,1]}(x - \eta_t\, \nabla L / \|\nabla L\|_2)` (per sample) keeping the best
iterate of each sample. The second adversarial variant (:class:`LpBall`) starts from a *different* image
:math:`x_0` and projects every iterate onto :math:`\{x : \|x - x_0\|_p \le \epsilon\} \cap [0,1]^d`.

Measures: :func:`alignment_score` (the paper's automatic score), :func:`shared_invariance` /
:func:`invariance_table` (how identically another model represents the IRIs) and :func:`explain_iris` (BiLRP of
(IRI, reference) pairs through :class:`zennit_bilrp.core.engine.BiLRP`, with the relevance share of corresponding
patches).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.checks import check_eval_mode, check_input
from ..core.engine import BiLRP
from ..lrp.layers import CaptureLayer, LayerEmbedding, get_layer
from ..lrp.restore import ModelGuard
from .filters import gaussian_blur
from .perceptual import available_distances, get_distance, lp_distance, norm_order

__all__ = [
    'resolve_layer', 'representation', 'representation_distance',
    'Regularizer', 'TotalVariation', 'Blur', 'L1Center', 'LpNorm', 'RandomTransforms', 'LpBall',
    'IRIGenerator', 'IRIResult', 'generate_iris', 'START_POINTS',
    'AlignmentScore', 'alignment_score', 'shared_invariance', 'InvarianceTable', 'invariance_table',
    'IRIExplanation', 'explain_iris', 'correspondence_share',
]

#: named starting points
START_POINTS = ('super-noise', 'light-noise', 'white', 'black')


def resolve_layer(model: torch.nn.Module, layer: Optional[str] = None) -> str:
    """The module name of the representation layer.

    ``None`` picks the penultimate pooled representation: a module named ``avgpool`` (torchvision ResNets, the
    demo encoder), else the last adaptive average-pooling module, else the model output (``''``). A given name
    must be one of ``model.named_modules()`` (``''`` is the model output).
    """
    names = dict(model.named_modules())
    if layer is None:
        if 'avgpool' in names:
            return 'avgpool'
        pools = [name for name, module in names.items() if isinstance(
            module, (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d))]
        return pools[-1] if pools else ''
    get_layer(model, layer)
    return layer


def _check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`~zennit_bilrp.core.checks.check_input`, plus what IRIs need: 4-D images with values in [0, 1]."""
    check_input(x, name)
    if x.dim() != 4:
        raise ValueError(f'{name} has shape {tuple(x.shape)}; expected a non-empty image batch (N, C, H, W)')
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f'{name} has values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1] (undo any '
                         'normalization and put it inside the model)')
    return x


@torch.no_grad()
def representation(model: torch.nn.Module, x: torch.Tensor, layer: Optional[str] = None,
                   batch_size: Optional[int] = None) -> torch.Tensor:
    """The flattened representation ``g(x)`` at ``layer`` (default: :func:`resolve_layer`), ``(N, h)``."""
    with CaptureLayer(model, resolve_layer(model, layer), flatten=True) as capture:
        if batch_size is None:
            return capture(x)
        return torch.cat([capture(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _normalized_distance(rep: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (rep - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(torch.finfo(ref.dtype).tiny)


@torch.no_grad()
def representation_distance(model: torch.nn.Module, x: torch.Tensor, reference: torch.Tensor,
                            layer: Optional[str] = None) -> torch.Tensor:
    r"""Normalized representation distance :math:`\|g(x) - g(x_\mathrm{ref})\|_2 / \|g(x_\mathrm{ref})\|_2`,
    ``(N,)``."""
    if x.shape != reference.shape:
        raise ValueError(f'x {tuple(x.shape)} and reference {tuple(reference.shape)} differ in shape')
    with CaptureLayer(model, resolve_layer(model, layer), flatten=True) as capture:
        return _normalized_distance(capture(x), capture(reference))


class Regularizer:
    """An image prior ``weight * value(x)`` added to the IRI objective; ``value`` maps ``(N, C, H, W)`` to ``(N,)``."""
    name = 'regularizer'

    def __init__(self, weight: float = 1.0):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f'{type(self).__name__}: weight must be finite and >= 0, got {weight}')
        self.weight = float(weight)

    def value(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.value(x)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(weight={self.weight})'


class TotalVariation(Regularizer):
    r"""Anisotropic total variation :math:`\mathrm{mean}|x_{i+1,j} - x_{ij}| + \mathrm{mean}|x_{i,j+1} - x_{ij}|`."""
    name = 'tv'

    def value(self, x):
        dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
        dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
        return dh + dw


class Blur(Regularizer):
    r"""High-frequency penalty :math:`\mathrm{mean}(x - G_\sigma * x)^2` (distance of ``x`` to its Gaussian blur).

    :math:`G_\sigma` is :func:`~zennit_bilrp.analysis.filters.gaussian_blur` with radius
    :math:`\max(1, \lceil 3\sigma \rceil)` and replicated borders.
    """
    name = 'blur'

    def __init__(self, weight: float = 1.0, sigma: float = 1.0):
        super().__init__(weight)
        if sigma <= 0:
            raise ValueError(f'Blur: sigma must be positive, got {sigma}')
        self.sigma = float(sigma)

    def value(self, x):
        return (x - gaussian_blur(x, self.sigma, padding='replicate')).pow(2).flatten(1).mean(dim=1)


class L1Center(Regularizer):
    r""":math:`\mathrm{mean}|x - c|` (default :math:`c = 0.5`, the center of the pixel range)."""
    name = 'l1'

    def __init__(self, weight: float = 1.0, center: float = 0.5):
        super().__init__(weight)
        self.center = float(center)

    def value(self, x):
        return (x - self.center).abs().flatten(1).mean(dim=1)


class LpNorm(Regularizer):
    r"""Size-normalized :math:`\ell_p` norm :math:`(\mathrm{mean}_i |x_i|^p)^{1/p}`."""
    name = 'lp'

    def __init__(self, weight: float = 1.0, p: float = 6.0):
        super().__init__(weight)
        if not p >= 1:
            raise ValueError(f'LpNorm: p must be >= 1, got {p}')
        self.p = float(p)

    def value(self, x):
        return x.abs().pow(self.p).flatten(1).mean(dim=1).add(1e-30).pow(1.0 / self.p)


_REGULARIZERS = {'tv': TotalVariation, 'blur': Blur, 'l1': L1Center, 'lp': LpNorm}


def _get_regularizers(regularizers) -> list[Regularizer]:
    if regularizers is None:
        return []
    if isinstance(regularizers, Mapping):
        out = []
        for name, weight in regularizers.items():
            if name not in _REGULARIZERS:
                raise ValueError(f'unknown regularizer {name!r}; choose one of {sorted(_REGULARIZERS)}')
            out.append(_REGULARIZERS[name](weight))
        return out
    out = list(regularizers)
    for reg in out:
        if not callable(reg):
            raise TypeError(f'regularizers must be callables x -> (N,), got {type(reg).__name__}')
    return out


@dataclass
class RandomTransforms:
    """Random, differentiable robustness transforms applied to the image before the model (new draw per step).

    Parameters
    ----------
    jitter : int
        Maximal translation in pixels (uniform in ``[-jitter, jitter]`` per axis, circular shift).
    scale : (float, float)
        Range of the isotropic zoom factor.
    rotation : float
        Maximal rotation in degrees (uniform in ``[-rotation, rotation]``).
    """
    jitter: int = 0
    scale: tuple[float, float] = (1.0, 1.0)
    rotation: float = 0.0

    def __post_init__(self):
        if self.jitter < 0 or self.rotation < 0:
            raise ValueError(f'RandomTransforms: jitter and rotation must be >= 0, got {self.jitter}, {self.rotation}')
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f'RandomTransforms: scale must be a range 0 < lo <= hi, got {self.scale}')

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        if self.jitter > 0:
            dy, dx = (int(v) for v in torch.randint(-self.jitter, self.jitter + 1, (2,), generator=generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        lo, hi = self.scale
        if self.rotation > 0 or hi > lo or lo != 1.0:
            u = torch.rand(2, n, generator=generator, dtype=torch.float64)
            scale = lo + (hi - lo) * u[0]
            angle = math.radians(self.rotation) * (2 * u[1] - 1)
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.zeros(n, 2, 3, dtype=torch.float64)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
            grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
        return x


@dataclass
class LpBall:
    r"""Constraint :math:`\|x - x_0\|_p \le \epsilon` around the starting image :math:`x_0` (adversarial IRIs).

    After every step the iterate is clipped to :math:`[0, 1]` and projected onto the ball: for :math:`\ell_\infty`
    element-wise clipping of :math:`x - x_0` to :math:`[-\epsilon, \epsilon]`, for :math:`\ell_2` radial scaling of
    :math:`x - x_0` (both keep :math:`[0, 1]` because :math:`x_0` lies in it). Floating-point rounding is then
    removed, so that :func:`~zennit_bilrp.analysis.perceptual.lp_distance` of the result never exceeds ``radius`` as
    compared
    in the images' dtype (i.e. against the radius rounded to that dtype).

    Parameters
    ----------
    radius : float
        The radius :math:`\epsilon > 0`.
    norm : {'l2', 'linf'} or 2 or inf
        The norm.
    """
    radius: float
    norm: Union[str, float] = 'l2'

    def __post_init__(self):
        if isinstance(self.radius, bool) or not isinstance(self.radius, (int, float)) or not math.isfinite(
                self.radius) or self.radius <= 0:
            raise ValueError(f'LpBall: radius must be a finite number > 0, got {self.radius!r}')
        self.radius = float(self.radius)
        self.order = norm_order(self.norm)

    def project(self, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Project ``x`` (already in [0, 1]) onto the ball around ``center``; exact in floating point."""
        r = self.radius
        if self.order == math.inf:
            x = torch.minimum(torch.maximum(x, center - r), center + r).clamp(0.0, 1.0)
            for _ in range(64):  # rounding of center +- r can exceed r by an ulp: step those entries towards center
                bad = (x - center).abs() > r
                if not bool(bad.any()):
                    break
                x = torch.where(bad, torch.nextafter(x, center), x)
            return x
        shape = (-1,) + (1,) * (x.dim() - 1)
        delta = x - center
        norm = lp_distance(x, center, 2)
        factor = torch.where(norm > r, r / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(norm))
        out = x
        for _ in range(64):  # radial scaling; rounding can leave the norm an ulp above r: shrink those samples
            out = torch.where((factor < 1).view(shape), (center + delta * factor.view(shape)).clamp(0.0, 1.0), x)
            bad = lp_distance(out, center, 2) > r
            if not bool(bad.any()):
                break
            factor = torch.where(bad, factor * (1 - 4 * torch.finfo(x.dtype).eps), factor)
        return out


def _writable(path: Union[str, os.PathLike]) -> Path:
    """``path`` as a :class:`~pathlib.Path`, with its folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


#: the tensor fields of :class:`IRIResult`, stored as arrays by :meth:`IRIResult.save`
_RESULT_TENSORS = ('iris', 'references', 'starts', 'representation_distance', 'start_distance', 'image_distance',
                   'start_image_distance', 'reached', 'history')


@dataclass
class IRIResult:
    r"""IRIs of a batch of references.

    Attributes
    ----------
    iris : torch.Tensor
        The IRIs :math:`x'` (best iterate of each sample), ``(N, C, H, W)`` in [0, 1].
    references, starts : torch.Tensor
        References :math:`x_\mathrm{ref}` and starting points :math:`x_0` (clipped to [0, 1]).
    representation_distance : torch.Tensor
        Final :math:`\|g(x') - g(x_\mathrm{ref})\|_2 / \|g(x_\mathrm{ref})\|_2` (no transforms), ``(N,)``.
    start_distance : torch.Tensor
        The same for the starting points, ``(N,)``.
    image_distance : torch.Tensor
        :math:`\|x' - x_\mathrm{ref}\|_2`, ``(N,)``.
    start_image_distance : torch.Tensor
        :math:`\|x' - x_0\|_p` with the ball's norm (:math:`\ell_2` without a ball), ``(N,)``.
    reached : torch.Tensor
        Boolean ``(N,)``: ``representation_distance <= target``.
    target : float
        The target representation distance.
    history : torch.Tensor
        Representation distance of every iterate (under the transforms, if any), ``(iterations + 1, N)``.
    layer : str
        The representation layer.
    config : dict
        The generation settings.
    """
    iris: torch.Tensor
    references: torch.Tensor
    starts: torch.Tensor
    representation_distance: torch.Tensor
    start_distance: torch.Tensor
    image_distance: torch.Tensor
    start_image_distance: torch.Tensor
    reached: torch.Tensor
    target: float
    history: torch.Tensor
    layer: str
    config: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.iris.shape[0]

    @property
    def not_reached(self) -> torch.Tensor:
        """Boolean ``(N,)``: samples whose representation distance stayed above the target."""
        return ~self.reached

    @property
    def reduction(self) -> torch.Tensor:
        """Factor by which the representation distance fell, ``start_distance / representation_distance``."""
        return self.start_distance / self.representation_distance.clamp_min(1e-30)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the result to one NumPy ``.npz`` file at exactly ``path`` (no pickle; reload with :meth:`load`).

        Every tensor is stored as an array of its own name (bfloat16 as float32, cast back on loading); ``target``,
        ``layer``, ``config`` and the tensors' dtypes as a JSON string in the array ``metadata``, so that
        ``numpy.load(path)`` reads the file without this package.

        Returns
        -------
        pathlib.Path
            The path written.

        Raises
        ------
        TypeError
            If ``config`` holds values that JSON cannot represent.
        """
        path = _writable(path)
        arrays, dtypes = {}, {}
        for name in _RESULT_TENSORS:
            tensor = getattr(self, name).detach().cpu()
            dtypes[name] = str(tensor.dtype).replace('torch.', '')
            arrays[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        try:
            metadata = json.dumps({'format': 'IRIResult', 'target': self.target, 'layer': self.layer,
                                   'config': self.config, 'dtypes': dtypes})
        except TypeError as error:
            raise TypeError(f'IRIResult.save: config must hold plain values (numbers, strings, lists, dicts): '
                            f'{error}') from error
        with open(path, 'wb') as handle:
            np.savez(handle, metadata=np.asarray(metadata), **arrays)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> IRIResult:
        """Read a result written by :meth:`save` (tensors on the CPU, in the dtypes they were saved with).

        Raises
        ------
        ValueError
            If the file is not an ``.npz`` written by :meth:`save`.
        """
        try:
            with np.load(path, allow_pickle=False) as archive:
                data = {key: archive[key] for key in archive.files}
        except (ValueError, OSError) as error:
            raise ValueError(f'{path} is not an IRIResult file written by IRIResult.save ({error})') from error
        missing = ({'metadata'} | set(_RESULT_TENSORS)) - set(data)
        if missing:
            raise ValueError(f'{path} is not an IRIResult file written by IRIResult.save (missing arrays '
                             f'{sorted(missing)})')
        metadata = json.loads(str(data['metadata']))
        tensors = {name: torch.from_numpy(data[name]).to(getattr(torch, metadata['dtypes'][name]))
                   for name in _RESULT_TENSORS}
        return cls(**tensors, target=float(metadata['target']), layer=metadata['layer'], config=metadata['config'])


class IRIGenerator:
    r"""Generate identically represented inputs of a model at a layer (see the module docstring for the maths).

    Parameters
    ----------
    model : torch.nn.Module
        The model (eval mode if it has BatchNorm/Dropout). It is never modified: the capture hook is removed and
        the model state is verified/restored by :class:`~zennit_bilrp.lrp.restore.ModelGuard` after every call.
    layer : str, optional
        Module name of the representation (default: :func:`resolve_layer`, the pooled penultimate layer).
    iterations : int
        Number of normalized-gradient steps (default 100).
    step_size : float
        Initial step length :math:`\eta` (in :math:`\ell_2` over the whole image), as in the paper (which ran
        thousands of constant steps on 224x224 images). The defaults (100 cosine-decayed steps) take seconds on the
        demo encoder; use ``schedule='constant'`` and more iterations for the published recipe.
    schedule : {'constant', 'cosine', 'linear'}
        Step-size schedule :math:`\eta_t`: constant, cosine or linear decay from ``step_size`` to
        ``step_size * final_step``.
    final_step : float
        Fraction of ``step_size`` reached at the end of a decaying schedule.
    regularizers : mapping or sequence, optional
        ``{'tv': w, 'blur': w, 'l1': w, 'lp': w}`` or :class:`Regularizer` instances / callables ``x -> (N,)``.
    transforms : RandomTransforms, optional
        Robustness transforms applied before the model.
    perceptual_weight : float
        :math:`c \ge 0`; with :math:`c > 0` the adversarial loss of Nanda et al. (representation loss minus
        :math:`c\,D(x, x_\mathrm{ref})`).
    perceptual : str or callable
        The distance :math:`D` (:func:`~zennit_bilrp.analysis.perceptual.get_distance`; default ``'random-features'``).
    ball : LpBall, optional
        The lp-ball variant: stay within the ball around the starting image (which must then be an image).
    target : float
        Target representation distance; samples above it are flagged in :attr:`IRIResult.reached`.
    seed : int
        Seed of the random starting points and transforms (results are deterministic given the seed).
    batch_size : int, optional
        References optimized together (default: all).
    progress : bool
        Show a tqdm progress bar over the steps.
    """

    def __init__(self, model: torch.nn.Module, layer: Optional[str] = None, iterations: int = 100,
                 step_size: float = 1.0, schedule: str = 'cosine', final_step: float = 0.02,
                 regularizers=None, transforms: Optional[RandomTransforms] = None, perceptual_weight: float = 0.0,
                 perceptual: Union[str, Callable] = 'random-features', ball: Optional[LpBall] = None,
                 target: float = 0.05, seed: int = 0, batch_size: Optional[int] = None, progress: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        self.model = model
        self.layer = resolve_layer(model, layer)
        if int(iterations) != iterations or iterations < 0:
            raise ValueError(f'iterations must be an integer >= 0, got {iterations}')
        if not math.isfinite(step_size) or step_size <= 0:
            raise ValueError(f'step_size must be a finite number > 0, got {step_size}')
        if schedule not in ('constant', 'cosine', 'linear'):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'linear', got {schedule!r}")
        if not 0 <= final_step <= 1:
            raise ValueError(f'final_step must lie in [0, 1], got {final_step}')
        if not math.isfinite(perceptual_weight) or perceptual_weight < 0:
            raise ValueError(f'perceptual_weight must be finite and >= 0, got {perceptual_weight}')
        if not math.isfinite(target) or target < 0:
            raise ValueError(f'target must be finite and >= 0, got {target}')
        if ball is not None and not isinstance(ball, LpBall):
            raise TypeError(f'ball must be an LpBall, got {type(ball).__name__}')
        if transforms is not None and not callable(transforms):
            raise TypeError('transforms must be a RandomTransforms (callable (x, generator) -> x)')
        if batch_size is not None and batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        self.iterations = int(iterations)
        self.step_size, self.schedule, self.final_step = float(step_size), schedule, float(final_step)
        self.regularizers = _get_regularizers(regularizers)
        self.transforms = transforms
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual = get_distance(perceptual) if perceptual_weight > 0 else None
        self.perceptual_name = perceptual if isinstance(perceptual, str) else getattr(perceptual, 'name', 'custom')
        self.ball = ball
        self.target = float(target)
        self.seed = int(seed)
        self.batch_size = batch_size
        self.progress = progress

    def config(self) -> dict:
        """The generation settings as plain values."""
        return {
            'layer': self.layer, 'iterations': self.iterations, 'step_size': self.step_size,
            'schedule': self.schedule, 'final_step': self.final_step,
            'regularizers': [repr(r) for r in self.regularizers], 'transforms': repr(self.transforms),
            'perceptual_weight': self.perceptual_weight,
            'perceptual': self.perceptual_name if self.perceptual_weight > 0 else None,
            'ball': None if self.ball is None else {'radius': self.ball.radius, 'norm': str(self.ball.norm)},
            'target': self.target, 'seed': self.seed,
        }

    def step_at(self, t: int) -> float:
        """Step length of step ``t`` (0-based)."""
        if self.schedule == 'constant' or self.iterations <= 1:
            return self.step_size
        frac = t / (self.iterations - 1)
        low = self.step_size * self.final_step
        if self.schedule == 'linear':
            return self.step_size + (low - self.step_size) * frac
        return low + 0.5 * (self.step_size - low) * (1 + math.cos(math.pi * frac))

    def starting_points(self, reference: torch.Tensor, start: Union[str, torch.Tensor]) -> torch.Tensor:
        """The starting points for ``reference`` (seeded), clipped to [0, 1]."""
        if isinstance(start, torch.Tensor):
            start = _check_images(start, 'start')
            if start.shape != reference.shape:
                raise ValueError(f'start {tuple(start.shape)} and reference {tuple(reference.shape)} differ in shape')
            return start.detach().to(reference)
        if self.ball is not None:
            raise ValueError('the lp-ball variant needs the starting image(s) as a tensor: it stays within the ball '
                             f'around them (got start={start!r})')
        generator = torch.Generator().manual_seed(self.seed)
        shape = tuple(reference.shape)
        if start == 'super-noise':
            x = torch.randn(shape, generator=generator, dtype=torch.float64)
        elif start == 'light-noise':
            x = 0.01 * torch.randn(shape, generator=generator, dtype=torch.float64)
        elif start == 'white':
            x = torch.ones(shape, dtype=torch.float64)
        elif start == 'black':
            x = torch.zeros(shape, dtype=torch.float64)
        else:
            raise ValueError(f'unknown start {start!r}; choose one of {START_POINTS} or pass an image tensor')
        return x.clamp(0.0, 1.0).to(reference)

    def __call__(self, reference: torch.Tensor, start: Union[str, torch.Tensor] = 'super-noise') -> IRIResult:
        """Generate one IRI per reference image.

        Parameters
        ----------
        reference : torch.Tensor
            References ``(N, C, H, W)`` in [0, 1], dtype and device of the model.
        start : {'super-noise', 'light-noise', 'white', 'black'} or torch.Tensor
            Starting points: ``randn`` or ``0.01 * randn`` (seeded; clipped to [0, 1] like every iterate),
            constant white or black images, or given images of the reference's shape.
        """
        reference = _check_images(reference, 'reference').detach()
        check_eval_mode(self.model)
        starts = self.starting_points(reference, start)
        n = reference.shape[0]
        chunk = n if self.batch_size is None else self.batch_size
        parts = []
        bar = tqdm(total=self.iterations * math.ceil(n / chunk), desc='IRIs', disable=not self.progress, leave=False)
        try:
            with ModelGuard(self.model):
                for index, lo in enumerate(range(0, n, chunk)):
                    parts.append(self._generate(reference[lo:lo + chunk], starts[lo:lo + chunk], index, bar))
        finally:
            bar.close()
        iris, history = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1)
        with ModelGuard(self.model), CaptureLayer(self.model, self.layer, flatten=True) as capture, torch.no_grad():
            ref_rep = capture(reference)
            rep_dist = _normalized_distance(capture(iris), ref_rep)
            start_dist = _normalized_distance(capture(starts), ref_rep)
        norm = 2 if self.ball is None else self.ball.order
        return IRIResult(
            iris=iris, references=reference, starts=starts, representation_distance=rep_dist,
            start_distance=start_dist, image_distance=lp_distance(iris, reference, 2),
            start_image_distance=lp_distance(iris, starts, norm), reached=rep_dist <= self.target,
            target=self.target, history=history, layer=self.layer, config=self.config(),
        )

    def _generate(self, reference, start, index, bar) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        tiny = torch.finfo(reference.dtype).tiny
        x = start.clone()
        if self.ball is not None:
            x = self.ball.project(x, start)
        best_x, best = x.clone(), torch.full((x.shape[0],), math.inf, dtype=reference.dtype, device=x.device)
        history = []
        with CaptureLayer(self.model, self.layer, flatten=True) as capture:
            with torch.no_grad():
                ref_rep = capture(reference)
            for t in range(self.iterations + 1):
                with torch.enable_grad():
                    x.requires_grad_(True)
                    inp = x if self.transforms is None else self.transforms(x, generator)
                    dist = _normalized_distance(capture(inp), ref_rep)
                    objective = dist
                    for reg in self.regularizers:
                        objective = objective + reg(x)
                    if self.perceptual is not None:
                        objective = objective - self.perceptual_weight * self.perceptual(x, reference)
                history.append(dist.detach())
                with torch.no_grad():
                    value = objective.detach()
                    better = value < best
                    best = torch.where(better, value, best)
                    best_x[better] = x.detach()[better]
                if t == self.iterations:
                    break
                grad, = torch.autograd.grad(objective.sum(), x)
                with torch.no_grad():
                    norm = grad.flatten(1).norm(dim=1).clamp_min(tiny).view(-1, 1, 1, 1)
                    x = (x.detach() - self.step_at(t) * grad / norm).clamp(0.0, 1.0)
                    if self.ball is not None:
                        x = self.ball.project(x, start)
                bar.update(1)
        return best_x, torch.stack(history)


def generate_iris(model: torch.nn.Module, reference: torch.Tensor, start: Union[str, torch.Tensor] = 'super-noise',
                  layer: Optional[str] = None, **kwargs) -> IRIResult:
    """Functional form of :class:`IRIGenerator`: ``IRIGenerator(model, layer, **kwargs)(reference, start)``."""
    return IRIGenerator(model, layer=layer, **kwargs)(reference, start)


@dataclass
class AlignmentScore:
    """The automatic alignment score under several distances.

    Attributes
    ----------
    scores : dict
        Distance name -> score in [0, 100].
    closer : dict
        Distance name -> boolean ``(N,)``: IRI perceptually closer to its reference than to its start.
    """
    scores: dict[str, float]
    closer: dict[str, torch.Tensor]

    @property
    def mean(self) -> float:
        """Mean score over the distances."""
        return float(sum(self.scores.values()) / len(self.scores))

    @property
    def std(self) -> float:
        """Population standard deviation of the score over the distances (0 for a single distance)."""
        values = torch.tensor(list(self.scores.values()), dtype=torch.float64)
        return float(values.std(unbiased=False))

    def __str__(self) -> str:
        parts = ', '.join(f'{k}: {v:.1f}' for k, v in self.scores.items())
        return f'alignment {self.mean:.1f} +- {self.std:.1f} ({parts})'


@torch.no_grad()
def alignment_score(result: Union[IRIResult, Sequence[torch.Tensor]],
                    distances: Union[None, str, Callable, Sequence] = None) -> AlignmentScore:
    r"""The automatic alignment score of Nanda et al. (AAAI 2023):

    .. math::

        A_D = 100 \cdot \frac{1}{N} \sum_i \mathbb{1}\left[D(x'_i, x_{\mathrm{ref},i}) < D(x'_i, x_{0,i})\right],

    the share of IRIs perceptually closer to their reference than to their starting point.

    Parameters
    ----------
    result : IRIResult or (iris, references, starts)
        The IRIs.
    distances : name, callable or sequence of them, optional
        Perceptual distances (default: :func:`~zennit_bilrp.analysis.perceptual.available_distances`); report
        :attr:`AlignmentScore.mean` and :attr:`AlignmentScore.std` over them.
    """
    if isinstance(result, IRIResult):
        iris, refs, starts = result.iris, result.references, result.starts
    else:
        iris, refs, starts = result
    if not (iris.shape == refs.shape == starts.shape):
        raise ValueError(f'iris, references and starts must have the same shape, got {tuple(iris.shape)}, '
                         f'{tuple(refs.shape)}, {tuple(starts.shape)}')
    if distances is None:
        distances = available_distances()
    elif isinstance(distances, str) or callable(distances):
        distances = [distances]
    scores, closer = {}, {}
    for distance in distances:
        fn = get_distance(distance)
        name = distance if isinstance(distance, str) else getattr(fn, 'name', repr(fn))
        flag = fn(iris, refs) < fn(iris, starts)
        scores[name] = 100.0 * float(flag.double().mean())
        closer[name] = flag
    return AlignmentScore(scores, closer)


@torch.no_grad()
def shared_invariance(result: IRIResult, model_b: torch.nn.Module, layer_b: Optional[str] = None
                      ) -> dict[str, torch.Tensor]:
    r"""How identically model B represents IRIs made on model A.

    For each IRI :math:`x'` of reference :math:`x_\mathrm{ref}` (made on A),

    .. math::

        d_B = \frac{\|g_B(x') - g_B(x_\mathrm{ref})\|_2}{\|g_B(x_\mathrm{ref})\|_2}, \qquad
        \rho_B = \frac{d_B(x', x_\mathrm{ref})}{d_B(x_0, x_\mathrm{ref})}.

    :math:`d_B = 0` means B shares A's invariance exactly; :math:`\rho_B` relates it to where the optimization
    started (:math:`\rho_B \ge 1`: A's IRIs are no closer to the reference for B than the starting points were).

    Returns
    -------
    dict
        ``'distance'`` :math:`d_B` and ``'relative'`` :math:`\rho_B`, each ``(N,)``.
    """
    check_eval_mode(model_b)
    with ModelGuard(model_b), CaptureLayer(model_b, resolve_layer(model_b, layer_b), flatten=True) as capture:
        ref = capture(result.references)
        d_iri = _normalized_distance(capture(result.iris), ref)
        d_start = _normalized_distance(capture(result.starts), ref)
    return {'distance': d_iri, 'relative': d_iri / d_start.clamp_min(1e-30)}


#: the columns of an :class:`InvarianceTable` file
_TABLE_COLUMNS = ('iris_from', 'measured_by', 'distance', 'distance_std', 'relative')


@dataclass
class InvarianceTable:
    """Shared-invariance table: entry ``[i, j]`` is the mean over IRIs made on model ``i`` of model ``j``'s
    normalized representation distance (``distance``, with its spread ``distance_std`` over the IRIs) and of its
    ratio to the start (``relative``); ``results`` holds the IRIs made on each model."""
    names: list[str]
    distance: torch.Tensor
    relative: torch.Tensor
    distance_std: torch.Tensor
    results: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per (generator model, measuring model)."""
        return [{'iris_from': a, 'measured_by': b, 'distance': float(self.distance[i, j]),
                 'distance_std': float(self.distance_std[i, j]), 'relative': float(self.relative[i, j])}
                for i, a in enumerate(self.names) for j, b in enumerate(self.names)]

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write :meth:`rows` to a CSV file (reload with :meth:`load`); the IRIs in ``results`` are not written
        (save each with :meth:`IRIResult.save`).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        with open(_writable(path), 'w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(_TABLE_COLUMNS))
            writer.writeheader()
            writer.writerows(self.rows())
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> InvarianceTable:
        """Read a table written by :meth:`save` (model order as in the file; ``results`` empty).

        Raises
        ------
        ValueError
            If the file lacks a column or does not hold one row for every (generator, measuring model) pair.
        """
        with open(path, newline='') as handle:
            reader = csv.DictReader(handle)
            missing = set(_TABLE_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f'{path} is not an InvarianceTable file (missing columns {sorted(missing)})')
            rows = list(reader)
        names = list(dict.fromkeys(row['iris_from'] for row in rows))
        cells = {(row['iris_from'], row['measured_by']): row for row in rows}
        if len(rows) != len(names) ** 2 or set(cells) != {(a, b) for a in names for b in names}:
            raise ValueError(f'{path}: expected one row for each of the {len(names)} x {len(names)} model pairs, '
                             f'got {len(rows)} rows')
        matrices = {key: torch.tensor([[float(cells[a, b][key]) for b in names] for a in names], dtype=torch.float64)
                    for key in ('distance', 'relative', 'distance_std')}
        return cls(names, **matrices)

    def format(self) -> str:
        """The distance matrix as text (rows: IRIs made on; columns: measured by)."""
        width = max(12, max(len(n) for n in self.names) + 2)
        lines = ['IRIs from \\ measured by'.ljust(width + 12) + ''.join(n.rjust(width) for n in self.names)]
        for i, name in enumerate(self.names):
            cells = ''.join(f'{float(self.distance[i, j]):.3f} ({float(self.relative[i, j]):.2f})'.rjust(width)
                            for j in range(len(self.names)))
            lines.append(name.ljust(width + 12) + cells)
        lines.append('cells: mean normalized distance d_B (mean ratio to the start rho_B)')
        return '\n'.join(lines)


def invariance_table(models: Mapping[str, Union[torch.nn.Module, tuple[torch.nn.Module, Optional[str]]]],
                     reference: torch.Tensor, start: Union[str, torch.Tensor] = 'super-noise',
                     results: Optional[Mapping[str, IRIResult]] = None, **kwargs) -> InvarianceTable:
    """Shared-invariance table for several models (see :func:`shared_invariance`).

    Parameters
    ----------
    models : mapping
        Name -> model or (model, layer).
    reference, start :
        As for :class:`IRIGenerator`; IRIs are made on every model from the same references and starts.
    results : mapping, optional
        Precomputed IRIs per model name (others are generated).
    **kwargs
        Settings of :class:`IRIGenerator`.
    """
    if len(models) < 1:
        raise ValueError('invariance_table needs at least one model')
    entries = {name: (m if isinstance(m, tuple) else (m, None)) for name, m in models.items()}
    results = dict(results or {})
    names = list(entries)
    k = len(names)
    dist, rel, std = (torch.zeros(k, k, dtype=torch.float64) for _ in range(3))
    for i, name_a in enumerate(names):
        model_a, layer_a = entries[name_a]
        if name_a not in results:
            results[name_a] = IRIGenerator(model_a, layer=layer_a, **kwargs)(reference, start)
        for j, name_b in enumerate(names):
            model_b, layer_b = entries[name_b]
            measures = shared_invariance(results[name_a], model_b, layer_b)
            dist[i, j] = measures['distance'].double().mean()
            std[i, j] = measures['distance'].double().std(unbiased=False)
            rel[i, j] = measures['relative'].double().mean()
    return InvarianceTable(names, dist, rel, std, results)


def correspondence_share(relevance: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Share of pairwise relevance on corresponding patches (same position in both images).

    For a pooled BiLRP matrix :math:`R \in \mathbb{R}^{P \times P}` of two images with the same patch grid,

    .. math::

        s_{|\cdot|} = \frac{\sum_p |R_{pp}|}{\sum_{p,q} |R_{pq}|}, \qquad
        s_+ = \frac{\sum_p \max(R_{pp}, 0)}{\sum_{p,q} \max(R_{pq}, 0)},

    to be compared with the chance level :math:`1/P` (relevance spread uniformly over all pairs).

    Returns
    -------
    dict
        ``'abs'`` and ``'positive'`` (corresponding shares, ``(B,)``), ``'non_corresponding_abs'`` (:math:`1 -
        s_{|\cdot|}`), ``'chance'`` (:math:`1/P`) and ``'ratio'`` (:math:`s_{|\cdot|} P`, 1 = chance).
    """
    if relevance.dim() != 3 or relevance.shape[1] != relevance.shape[2]:
        raise ValueError('relevance must be (B, P, P) with one patch grid for both images, got '
                         f'{tuple(relevance.shape)}')
    diag = torch.diagonal(relevance, dim1=1, dim2=2)
    tiny = torch.finfo(relevance.dtype).tiny
    abs_share = diag.abs().sum(1) / relevance.abs().sum((1, 2)).clamp_min(tiny)
    pos_share = diag.clamp_min(0).sum(1) / relevance.clamp_min(0).sum((1, 2)).clamp_min(tiny)
    p = relevance.shape[1]
    return {'abs': abs_share, 'positive': pos_share, 'non_corresponding_abs': 1 - abs_share,
            'chance': torch.full_like(abs_share, 1.0 / p), 'ratio': abs_share * p}


@dataclass
class IRIExplanation:
    """BiLRP of (IRI, reference) pairs.

    Attributes
    ----------
    result : BiLRPResult
        The engine's result (``x_a`` = IRIs, ``x_b`` = references): pooled pairwise relevance, marginals (which
        regions were matched), top pairs.
    share : dict
        :func:`correspondence_share` of the pooled relevance.
    """
    result: object
    share: dict[str, torch.Tensor]


def explain_iris(result: IRIResult, model: Optional[torch.nn.Module] = None, pooling=8, composite=None,
                 similarity='cosine', bilrp=None, marginals: bool = True) -> IRIExplanation:
    """Explain with BiLRP why the model represents each IRI like its reference.

    The representation at ``result.layer`` is explained through :class:`~zennit_bilrp.core.engine.BiLRP` on
    :class:`~zennit_bilrp.lrp.layers.LayerEmbedding` ``(model, result.layer, flatten=True)``, with the IRIs as first
    and the references as second inputs (one forward pass for both, as the engine requires).

    Parameters
    ----------
    result : IRIResult
        The IRIs.
    model : torch.nn.Module, optional
        The model the IRIs were made on (not needed when ``bilrp`` is given).
    pooling : int or Pooling
        Patch pooling of the pairwise relevance.
    composite : zennit Composite, optional
        LRP composite (default: the engine's default); include canonizers for BatchNorm models (e.g.
        ``EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))`` or ``demo_composite(model)``).
    similarity : str
        Similarity explained (``'cosine'`` or ``'dot'``).
    bilrp : BiLRP, optional
        A configured engine whose model outputs the representation (overrides ``model``/``composite``).
    marginals : bool
        Compute the input-resolution marginals.
    """

    if bilrp is None:
        if model is None:
            raise ValueError('explain_iris needs the model (or a configured BiLRP engine)')
        bilrp = BiLRP(LayerEmbedding(model, result.layer, flatten=True), composite=composite, similarity=similarity)
    explanation = bilrp.explain(result.iris, result.references, pooling=pooling, marginals=marginals)
    return IRIExplanation(explanation, correspondence_share(explanation.relevance))
