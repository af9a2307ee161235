r"""Embedding heads for token sequences: pooling the hidden states of a transformer encoder into one embedding.

The heads read the output of :class:`~zennit_bilrp.lrp.text_transformers.TokenEncoder`, ``(N, H + 1, L)``: the
hidden states as ``H`` channels over ``L`` token positions, the attention mask (1 for tokens, 0 for padding) as
the last channel. Like every :class:`~zennit_bilrp.core.heads.Head` they turn the embedding relevance
:math:`\phi \odot s` into relevance on that output with the proportional rule, which is exact:
:math:`\sum_l R_{c,l} = s_c \phi_c`. Padding positions get none.
"""
from __future__ import annotations

import torch

from ..lrp.text_transformers import check_token_mask
from .heads import Head

__all__ = ['TokenHead', 'MaskedMeanHead', 'ClsHead', 'TOKEN_HEADS']


class TokenHead(Head):
    """Base class of heads on the :class:`~zennit_bilrp.lrp.text_transformers.TokenEncoder` output
    ``(N, H + 1, L)`` (mask in the last channel): the embedding is a weighted sum over the token positions,
    :math:`\\phi_c = \\sum_l w_l A_{c,l}`, with weights from the mask (:meth:`weights`)."""

    name = 'token'

    def check(self, output):
        if output.dim() != 3 or output.shape[1] < 2:
            raise ValueError(f"head '{self.name}' expects the TokenEncoder output (N, H + 1, L), got "
                             f'{tuple(output.shape)}')
        check_token_mask(output[:, -1], f"head '{self.name}'")

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Pooling weights ``(N, L)`` of the token positions, from the mask ``(N, L)``."""
        raise NotImplementedError

    def embed(self, output):
        return torch.einsum('nhl,nl->nh', output[:, :-1], self.weights(output[:, -1]))

    def contribution(self, output):
        weighted = output[:, :-1] * self.weights(output[:, -1])[:, None, :]
        return torch.cat([weighted, torch.zeros_like(output[:, -1:])], dim=1)

    def expand(self, multipliers, output):
        padded = torch.cat([multipliers, multipliers.new_zeros(*multipliers.shape[:2], 1)], dim=2)
        return padded[..., None]


class MaskedMeanHead(TokenHead):
    r"""Mean pooling over the tokens (padding excluded), as sentence-transformers' ``Pooling`` (mean mode).

    :math:`\phi_c = \sum_l m_l A_{c,l} / \sum_l m_l`; relevance :math:`R_{c,l} = s_c\, m_l A_{c,l} / \sum_l m_l`
    (the proportional rule, exact: :math:`\sum_l R_{c,l} = s_c \phi_c`). Padding positions get none.
    """
    name = 'masked_mean'

    def weights(self, mask):
        return mask / mask.sum(dim=-1, keepdim=True)


class ClsHead(TokenHead):
    r"""First-token pooling (``[CLS]``): :math:`\phi_c = A_{c,0}`, all relevance to position 0 of the output."""
    name = 'cls'

    def weights(self, mask):
        weights = torch.zeros_like(mask)
        weights[:, 0] = 1.0
        return weights


#: the token heads by name
TOKEN_HEADS = {cls.name: cls for cls in (MaskedMeanHead, ClsHead)}
