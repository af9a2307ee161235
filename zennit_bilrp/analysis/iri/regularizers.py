r"""Image priors of the IRI objective: each :class:`Regularizer` adds :math:`\lambda_k \, \mathrm{reg}_k(x)`
(:class:`TotalVariation`, :class:`Blur`, :class:`L1Center`, :class:`LpNorm`), chosen by name or given as callables
(:func:`get_regularizers`)."""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..filters import gaussian_blur

__all__ = ['Regularizer', 'TotalVariation', 'Blur', 'L1Center', 'LpNorm', 'REGULARIZERS', 'get_regularizers']


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


#: the regularizers by name, for ``regularizers={'tv': w, ...}``
REGULARIZERS = {'tv': TotalVariation, 'blur': Blur, 'l1': L1Center, 'lp': LpNorm}


def get_regularizers(regularizers) -> list[Regularizer]:
    """The regularizers of ``{name: weight}`` (names of :data:`REGULARIZERS`), or the given callables checked."""
    if regularizers is None:
        return []
    if isinstance(regularizers, Mapping):
        out = []
        for name, weight in regularizers.items():
            if name not in REGULARIZERS:
                raise ValueError(f'unknown regularizer {name!r}; choose one of {sorted(REGULARIZERS)}')
            out.append(REGULARIZERS[name](weight))
        return out
    out = list(regularizers)
    for reg in out:
        if not callable(reg):
            raise TypeError(f'regularizers must be callables x -> (N,), got {type(reg).__name__}')
    return out
