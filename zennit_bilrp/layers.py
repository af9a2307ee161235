"""Layers that similarity models need and Zennit lacks.

:class:`Normalize` is L2 normalisation as a module (``F.normalize`` is a function and cannot be hooked). Under
LRP the norm is treated as a constant, so relevance passes through unchanged (Zennit's ``Pass`` rule); the BiLRP
engine registers that rule automatically where a composite assigns none.
"""
from __future__ import annotations

import torch

__all__ = ['Normalize']


class Normalize(torch.nn.Module):
    """L2-normalise along ``dim``: ``y = x / max(|x|, eps)``.

    Parameters
    ----------
    dim : int
        Axis to normalise (default 1, the feature axis).
    eps : float
        Lower bound of the norm.
    """

    def __init__(self, dim: int = 1, eps: float = 1e-12):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(input, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, eps={self.eps}'
