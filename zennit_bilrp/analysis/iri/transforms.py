r"""What happens to the iterate of the IRI search besides the gradient step: random, differentiable robustness
transforms :math:`T` before the model (:class:`RandomTransforms`), and the projection onto an
:math:`\ell_p` ball around the starting image after each step (:class:`LpBall`, the second adversarial variant)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from ..perceptual import lp_distance, norm_order

__all__ = ['RandomTransforms', 'LpBall']


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
