r"""A hand-written reference of the BiLRP authors' LRP rules on VGG (``oeberle/BiLRP_explain_similarity``,
``model/bilrp.py``), independent of Zennit: one explicit pass per embedding unit, rule by rule.

- ``features[0]``: :math:`z^{\mathcal{B}}`, :math:`z = Wx + b - (W^+ l + b^+) - (W^- h + b^-)`, divided by
  :math:`z + 10^{-6}`, relevance :math:`x \odot c_x + l \odot c_l + h \odot c_h`.
- other convolutions ``features[i]``: :math:`z = (W + \gamma W^+) a + b + \gamma b^+ + 10^{-9}`, relevance
  :math:`a \odot (W + \gamma W^+)^\top (R / z)`, :math:`\gamma` by index (<= 10: 0.5, 11-17: 0.25, 18-24: 0.1,
  else 0).
- max pooling: :math:`z = \mathrm{maxpool}(a) + 10^{-9}`, relevance :math:`a \odot \nabla_a \mathrm{maxpool}(a)
  \cdot (R / z)`; ReLU passes relevance on.
- the projection (bias-free linear layer on the flattened features): LRP-0, :math:`z = W a + 10^{-9}`.

The products :math:`W^\top s` are the gradients of :math:`\langle z(a), s\rangle` (as in the authors' code).
"""
import torch
from torch import nn


def paper_gamma(index: int) -> float:
    """The authors' gamma for ``features[index]``."""
    if index <= 10:
        return 0.5
    if 11 <= index <= 17:
        return 0.25
    if 18 <= index <= 24:
        return 0.1
    return 0.0


def _transposed(layer_fn, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The vector-Jacobian product of ``layer_fn`` at ``a`` with ``s`` (for a linear map: ``W^T s``)."""
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        out = layer_fn(a)
        grad, = torch.autograd.grad(out, a, grad_outputs=s)
    return grad


def _conv(conv: nn.Conv2d, weight: torch.Tensor, bias):
    return lambda a: conv._conv_forward(a, weight, bias)


def zbox_relevance(conv: nn.Conv2d, x: torch.Tensor, r: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """The authors' first-layer rule."""
    w, b = conv.weight.detach(), conv.bias.detach()
    lo, hi = low.expand_as(x).to(x), high.expand_as(x).to(x)
    z = (_conv(conv, w, b)(x) - _conv(conv, w.clamp(min=0), b.clamp(min=0))(lo)
         - _conv(conv, w.clamp(max=0), b.clamp(max=0))(hi))
    s = r / (z + 1e-6)
    c_x = _transposed(_conv(conv, w, b), x, s)
    c_l = -_transposed(_conv(conv, w.clamp(min=0), b.clamp(min=0)), lo, s)
    c_h = -_transposed(_conv(conv, w.clamp(max=0), b.clamp(max=0)), hi, s)
    return x * c_x + lo * c_l + hi * c_h


def gamma_relevance(conv: nn.Conv2d, a: torch.Tensor, r: torch.Tensor, gamma: float) -> torch.Tensor:
    """The authors' LRP-gamma rule (bias kept, transformed like the weights)."""
    w, b = conv.weight.detach(), conv.bias.detach()
    fn = _conv(conv, w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0))
    z = fn(a) + 1e-9
    return a * _transposed(fn, a, r / z)


def maxpool_relevance(pool: nn.MaxPool2d, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The authors' max pooling: the same ratio rule without weights."""
    z = pool(a) + 1e-9
    return a * _transposed(pool, a, r / z)


def projection_relevance(linear: nn.Linear, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """LRP-0 of the bias-free projection, stabilizer ``z + 1e-9`` whatever the sign."""
    w = linear.weight.detach()
    z = a @ w.T + 1e-9
    return a * ((r / z) @ w)


def paper_lrp(model: nn.Module, x: torch.Tensor, seed: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """Relevance of the input ``x`` (one image ``(1, C, H, W)``) for the output relevance ``seed`` ``(1, h)`` of a
    model ``projection(flatten(features(x)))`` under the authors' rules."""
    layers = list(model.features)
    activations = [x]
    with torch.no_grad():
        for layer in layers:
            activations.append(layer(activations[-1]))
        flat = activations[-1].flatten(1)
    r = projection_relevance(model.projection, flat, seed).reshape(activations[-1].shape)
    for index in range(len(layers) - 1, -1, -1):
        layer, a = layers[index], activations[index]
        if isinstance(layer, nn.Conv2d):
            r = zbox_relevance(layer, a, r, low, high) if index == 0 else gamma_relevance(layer, a, r,
                                                                                          paper_gamma(index))
        elif isinstance(layer, nn.MaxPool2d):
            r = maxpool_relevance(layer, a, r)
        elif not isinstance(layer, nn.ReLU):
            raise TypeError(f'the reference has no rule for {type(layer).__name__}')
    return r


def paper_factors(model: nn.Module, x: torch.Tensor, patch: int, low: torch.Tensor, high: torch.Tensor):
    """Pooled factors ``(h, P)``: for each unit ``m`` the relevance of the seed ``phi_m(x) e_m``, channels summed
    and summed over ``patch x patch`` patches (row-major)."""
    with torch.no_grad():
        embedding = model(x)
    rows = []
    for unit in range(embedding.shape[1]):
        seed = torch.zeros_like(embedding)
        seed[0, unit] = embedding[0, unit]
        relevance = paper_lrp(model, x, seed, low, high).sum(1, keepdim=True)
        rows.append(nn.functional.avg_pool2d(relevance, patch).flatten() * patch ** 2)
    return torch.stack(rows)


class SmallVGG(nn.Module):
    """A narrow network with torchvision VGG-16's ``features`` layout (31 entries: 13 convolutions with ReLU,
    5 max poolings), flattened and projected by a bias-free linear layer."""

    def __init__(self, width: int = 4, embedding: int = 6, size: int = 32):
        super().__init__()
        layers, channels = [], 3
        for block, convs in enumerate((2, 2, 3, 3, 3)):
            out = width * min(2 ** block, 4)
            for _ in range(convs):
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.projection = nn.Linear(channels * (size // 32) ** 2, embedding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.flatten(self.features(x)))
