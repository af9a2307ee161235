r"""IRI generation: :class:`IRIGenerator` minimizes the objective of :mod:`zennit_bilrp.analysis.iri` by normalized
gradient descent from a starting point, keeping each sample's best iterate, and returns an :class:`IRIResult`
(saved as one NumPy ``.npz``, no pickle); :func:`generate_iris` is its functional form."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core.checks import check_eval_mode
from ...lrp.layers import CaptureLayer
from ...lrp.restore import ModelGuard
from ..perceptual import get_distance, lp_distance
from .regularizers import get_regularizers
from .representation import check_images, normalized_distance, resolve_layer
from .transforms import LpBall, RandomTransforms

__all__ = ['IRIGenerator', 'IRIResult', 'generate_iris', 'START_POINTS']

#: named starting points
START_POINTS = ('super-noise', 'light-noise', 'white', 'black')


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
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
        self.regularizers = get_regularizers(regularizers)
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
            start = check_images(start, 'start')
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
        reference = check_images(reference, 'reference').detach()
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
            rep_dist = normalized_distance(capture(iris), ref_rep)
            start_dist = normalized_distance(capture(starts), ref_rep)
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
                    dist = normalized_distance(capture(inp), ref_rep)
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
