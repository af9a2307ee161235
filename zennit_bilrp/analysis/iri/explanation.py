"""BiLRP of IRIs: why the model represents an IRI like its reference (:func:`explain_iris`), with the share of
pairwise relevance on corresponding patches (:func:`correspondence_share`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...core.engine import BiLRP
from ...lrp.layers import LayerEmbedding
from .generation import IRIResult

__all__ = ['correspondence_share', 'IRIExplanation', 'explain_iris']


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
