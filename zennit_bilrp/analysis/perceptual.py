r"""Image distances for identically represented inputs (IRIs): perceptual proxies and exact lp distances.

All distances map two image batches ``(N, C, H, W)`` in :math:`[0, 1]` to ``(N,)`` and are differentiable, so
they serve both as the adversarial term of IRI generation and as judges of the alignment score
(:func:`zennit_bilrp.analysis.iri.invariance.alignment_score`). None of the offline ones needs downloaded weights:

``'pixel'``
    Root-mean-square pixel difference :math:`\sqrt{\mathrm{mean}_i (x_i - y_i)^2}` (not perceptual; a baseline).
``'ssim'``
    Multi-scale structural dissimilarity :math:`1 - \frac{1}{S}\sum_{s} \mathrm{SSIM}(x^{(s)}, y^{(s)})` over
    ``S`` dyadic scales (2x2 average pooling between scales), SSIM of Wang et al. (2004) with an 11-tap Gaussian
    window (:math:`\sigma = 1.5`), :math:`C_1 = 0.01^2`, :math:`C_2 = 0.03^2`, averaged over channels and positions.
    Unlike MS-SSIM (Wang et al., 2003) the scales are weighted equally. Limits: it measures local luminance,
    contrast and structure only; it is insensitive to small shifts of large uniform regions and knows nothing of
    semantics.
``'random-features'``
    An LPIPS-like distance on the features of a *fixed random* convolutional network (three 3x3 conv + ReLU layers,
    16/32/64 channels, 2x2 average pooling in between, He-normal weights drawn from ``torch.Generator`` seeded with
    ``seed``): per layer, features are unit-normalized along channels and the squared differences averaged over
    positions; the layer terms are summed. Random convolutional features are known to carry texture and local
    structure (Ulyanov et al., 2018; Gatys-style statistics), but they were *not* calibrated against human
    judgments as LPIPS was (Zhang et al., 2018): treat scores as a proxy.
``'lpips'``
    LPIPS (Zhang et al., 2018) when the ``lpips`` package is installed *and* the backbone weights are already in
    the torch hub cache (nothing is downloaded; otherwise a clear error). :func:`available_distances` lists it only
    then.

:func:`lp_distance` gives exact :math:`\ell_2`/:math:`\ell_\infty` distances (used for the lp-ball constraint).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Union

import torch
import torch.nn.functional as F

from .filters import gaussian_blur

__all__ = [
    'PerceptualDistance', 'PixelDistance', 'SSIMDistance', 'RandomFeatureDistance', 'LPIPSDistance',
    'get_distance', 'available_distances', 'lp_distance', 'norm_order', 'DISTANCES',
]


def lp_distance(x: torch.Tensor, y: torch.Tensor, norm: Union[str, float] = 2) -> torch.Tensor:
    r"""Per-sample :math:`\|x - y\|_p` over all non-batch axes, ``(N,)``; ``norm`` is 2, ``'l2'``, ``inf`` or
    ``'linf'``."""
    p = norm_order(norm)
    diff = (x - y).flatten(1)
    if p == math.inf:
        return diff.abs().amax(dim=1)
    return torch.linalg.vector_norm(diff, ord=2, dim=1)


def norm_order(norm: Union[str, float]) -> float:
    r"""The order :math:`p` of an :math:`\ell_p` norm given by name or number: ``2.0`` or ``math.inf``.

    Parameters
    ----------
    norm : {2, 'l2', '2', inf, 'linf', 'inf'}
        The norm (names are case-insensitive).

    Raises
    ------
    ValueError
        For any other norm.
    """
    key = norm.lower() if isinstance(norm, str) else norm
    if key in (2, 2.0, 'l2', '2'):
        return 2.0
    if key in (math.inf, 'linf', 'inf'):
        return math.inf
    raise ValueError(f"unknown norm {norm!r}; choose 'l2' (2) or 'linf' (inf)")


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f'{name}: expected two image batches (N, C, H, W) of the same shape, got '
                         f'{tuple(x.shape)} and {tuple(y.shape)}')


class PerceptualDistance(torch.nn.Module):
    """Base class: ``forward(x, y)`` maps two image batches ``(N, C, H, W)`` in [0, 1] to distances ``(N,)``."""
    name = 'distance'

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f'name={self.name!r}'


class PixelDistance(PerceptualDistance):
    """Root-mean-square pixel difference (a non-perceptual baseline)."""
    name = 'pixel'

    def forward(self, x, y):
        _check_pair(x, y, self.name)
        return (x - y).flatten(1).pow(2).mean(dim=1).add(1e-24).sqrt()


class SSIMDistance(PerceptualDistance):
    """Multi-scale structural dissimilarity ``1 - mean_s SSIM_s`` (equal scale weights; see module docstring).

    Parameters
    ----------
    scales : int
        Number of dyadic scales (fewer are used when the image gets smaller than 4 pixels).
    window : int
        Gaussian window size (shrunk to the image size at coarse scales; odd).
    sigma : float
        Gaussian window width.
    """
    name = 'ssim'

    def __init__(self, scales: int = 3, window: int = 11, sigma: float = 1.5):
        super().__init__()
        if scales < 1 or window < 1 or sigma <= 0:
            raise ValueError(f'SSIMDistance: need scales >= 1, window >= 1, sigma > 0; got {scales}, {window}, {sigma}')
        self.scales, self.window, self.sigma = int(scales), int(window), float(sigma)

    def _ssim(self, x, y):
        size = min(self.window, x.shape[2], x.shape[3])
        size = size if size % 2 == 1 else size - 1

        def blur(t):
            return gaussian_blur(t, self.sigma, size, padding='valid')

        c1, c2 = 0.01 ** 2, 0.03 ** 2
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x ** 2
        var_y = blur(y * y) - mu_y ** 2
        cov = blur(x * y) - mu_x * mu_y
        ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        return ssim.flatten(1).mean(dim=1)

    def forward(self, x, y):
        _check_pair(x, y, self.name)
        values = []
        for scale in range(self.scales):
            if scale > 0:
                if min(x.shape[2], x.shape[3]) < 8:
                    break
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            values.append(self._ssim(x, y))
        return 1.0 - torch.stack(values).mean(dim=0)


class RandomFeatureDistance(PerceptualDistance):
    """LPIPS-like distance on the features of a fixed, seeded random conv net (see module docstring).

    Parameters
    ----------
    seed : int
        Seed of the network's weights (the same seed gives the same distance on every machine and run).
    widths : tuple of int
        Channels of the three conv layers.
    """
    name = 'random-features'

    def __init__(self, seed: int = 0, widths=(16, 32, 64)):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        self.seed = int(seed)
        weights, c_in = [], 3
        for i, c_out in enumerate(widths):
            w = torch.randn(c_out, c_in, 3, 3, generator=generator, dtype=torch.float64) * math.sqrt(2.0 / (9 * c_in))
            self.register_buffer(f'weight{i}', w)
            weights.append(w)
            c_in = c_out
        self.depth = len(widths)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalized features of each layer."""
        feats = []
        h = (x - 0.5) * 2.0
        for i in range(self.depth):
            if i > 0:
                h = F.avg_pool2d(h, 2) if min(h.shape[2:]) >= 2 else h
            h = F.relu(F.conv2d(h, getattr(self, f'weight{i}').to(x), padding=1))
            feats.append(h / h.norm(dim=1, keepdim=True).clamp_min(1e-10))
        return feats

    def forward(self, x, y):
        _check_pair(x, y, self.name)
        if x.shape[1] != 3:
            raise ValueError(f'random-features: expected RGB images (N, 3, H, W), got {tuple(x.shape)}')
        n = x.shape[0]
        total = 0.0
        for feat in self.features(torch.cat([x, y])):
            total = total + (feat[:n] - feat[n:]).pow(2).sum(dim=1).flatten(1).mean(dim=1)
        return total

    def extra_repr(self) -> str:
        return f'name={self.name!r}, seed={self.seed}'


#: torchvision checkpoint files LPIPS' backbones load (only used to check the local cache; nothing downloads)
_LPIPS_BACKBONES = {
    'alex': 'alexnet-owt-7be5be79.pth',
    'vgg': 'vgg16-397923af.pth',
    'squeeze': 'squeezenet1_1-b8a52dc0.pth',
}


class LPIPSDistance(PerceptualDistance):
    """LPIPS (Zhang et al., 2018) through the ``lpips`` package, with weights that must already be local.

    Raises
    ------
    ImportError
        If ``lpips`` is not installed.
    RuntimeError
        If the backbone weights are not in the torch hub cache (nothing is downloaded).
    """
    name = 'lpips'

    def __init__(self, net: str = 'alex'):
        super().__init__()
        if net not in _LPIPS_BACKBONES:
            raise ValueError(f"LPIPSDistance: unknown net {net!r}; choose one of {sorted(_LPIPS_BACKBONES)}")
        try:
            import lpips
        except ImportError as error:
            raise ImportError("LPIPSDistance needs the 'lpips' package (pip install lpips) and its backbone "
                              "weights in the torch hub cache; use 'ssim' or 'random-features' offline") from error
        path = os.path.join(torch.hub.get_dir(), 'checkpoints', _LPIPS_BACKBONES[net])
        if not os.path.isfile(path):
            raise RuntimeError(f'LPIPSDistance: backbone weights for {net!r} not found at {path}; they would have '
                               "to be downloaded. Place them there or use 'ssim' / 'random-features' offline")
        self.net = net
        self.model = lpips.LPIPS(net=net, verbose=False).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    def forward(self, x, y):
        _check_pair(x, y, self.name)
        return self.model(x * 2 - 1, y * 2 - 1, normalize=False).flatten(1).mean(dim=1)


#: names understood by :func:`get_distance`
DISTANCES: dict[str, Callable[[], PerceptualDistance]] = {
    'pixel': PixelDistance,
    'ssim': SSIMDistance,
    'random-features': RandomFeatureDistance,
    'lpips': LPIPSDistance,
}


def get_distance(distance: Union[str, Callable]) -> Callable:
    """A distance by name (see :data:`DISTANCES`), or a given callable ``(x, y) -> (N,)`` unchanged."""
    if isinstance(distance, str):
        if distance not in DISTANCES:
            raise ValueError(f'unknown distance {distance!r}; choose one of {sorted(DISTANCES)} or pass a callable')
        return DISTANCES[distance]()
    if not callable(distance):
        raise TypeError(f'distance must be a name or a callable (x, y) -> (N,), got {type(distance).__name__}')
    return distance


def available_distances(perceptual_only: bool = True) -> list[str]:
    """Names of the distances usable here: the offline ones, plus ``'lpips'`` when it works without downloads.

    ``perceptual_only`` leaves out the ``'pixel'`` baseline.
    """
    names = ['ssim', 'random-features'] + ([] if perceptual_only else ['pixel'])
    try:
        LPIPSDistance()
    except (ImportError, RuntimeError):
        pass
    else:
        names.append('lpips')
    return names
