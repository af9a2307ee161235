r"""Similarity functions explained by BiLRP.

Every similarity here is a bilinear form of the two embeddings, possibly scaled per pair:

.. math::

    y(x, x') = c(x, x') \, \phi(x)^\top G \, \phi(x')

with :math:`G = I` for the dot product, :math:`G = I` and :math:`c = 1 / (\|\phi(x)\| \|\phi(x')\|)` for the
cosine similarity (norms treated as constants, so conservation is kept), and a user matrix :math:`G = W` for the
bilinear similarity. BiLRP then is :math:`R = c \, F(x)^\top G \, F(x')` with the factors
:math:`F(x)_{m,:} = R_m(x)`, the LRP explanation of embedding unit :math:`m` started from its own value
(see :mod:`zennit_bilrp.core.engine`).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ['Similarity', 'DotSimilarity', 'CosineSimilarity', 'BilinearSimilarity', 'get_similarity', 'SIMILARITIES',
           'register_similarity', 'named_similarities']


class Similarity:
    """Base class: a (scaled) bilinear form ``c * a^T G b`` of two batches of embeddings."""

    #: name used by :func:`get_similarity` and the CLI
    name = 'base'

    def scale(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """Per-pair scale ``c``, shape ``(B,)``. Default: ones."""
        return emb_a.new_ones(emb_a.shape[0])

    def matrix(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> Optional[torch.Tensor]:
        """The matrix ``G`` of shape ``(h_a, h_b)``, or ``None`` for the identity."""
        return None

    def check(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> None:
        """Raise a ``ValueError`` if the embeddings do not fit this similarity."""
        matrix = self.matrix(emb_a, emb_b)
        if matrix is None:
            if emb_a.shape[1] != emb_b.shape[1]:
                raise ValueError(
                    f'{type(self).__name__}: embedding sizes differ ({emb_a.shape[1]} vs {emb_b.shape[1]}); '
                    'a dot-product similarity needs equal sizes (use BilinearSimilarity for different towers)'
                )
        elif tuple(matrix.shape) != (emb_a.shape[1], emb_b.shape[1]):
            raise ValueError(
                f'{type(self).__name__}: matrix of shape {tuple(matrix.shape)} does not fit embeddings of sizes '
                f'{emb_a.shape[1]} and {emb_b.shape[1]}'
            )

    def __call__(self, emb_a: torch.Tensor, emb_b: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The similarity of each pair, shape ``(B,)`` (``check=False`` skips :meth:`check` for embeddings that
        were checked already)."""
        if check:
            self.check(emb_a, emb_b)
        matrix = self.matrix(emb_a, emb_b)
        right = emb_b if matrix is None else emb_b @ matrix.to(emb_b).T
        return self.scale(emb_a, emb_b) * (emb_a * right).sum(dim=1)

    def partner_multipliers(self, totals_a: torch.Tensor, totals_b: torch.Tensor, emb_a: torch.Tensor,
                            emb_b: torch.Tensor):
        """Output-relevance multipliers for the marginals.

        The marginal of input ``a`` is ``M(a) (phi(a) * s_a)`` with ``s_a = c G t_b``, where ``t_b`` holds the
        total relevance of each unit of ``b`` (``phi(b)`` when LRP conserves); likewise for ``b``.

        Returns
        -------
        tuple of torch.Tensor
            ``(s_a, s_b)`` of shapes ``(B, h_a)`` and ``(B, h_b)``.
        """
        matrix = self.matrix(emb_a, emb_b)
        scale = self.scale(emb_a, emb_b).to(totals_a)[:, None]
        if matrix is None:
            return scale * totals_b, scale * totals_a
        matrix = matrix.to(totals_a)
        return scale * (totals_b @ matrix.T), scale * (totals_a @ matrix)

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


class DotSimilarity(Similarity):
    """Dot product ``y = <phi(x), phi(x')>``."""
    name = 'dot'


class CosineSimilarity(Similarity):
    """Cosine similarity ``y = <phi(x), phi(x')> / (|phi(x)| |phi(x')|)``.

    The norms are treated as constants in the backward pass, so the explanation conserves ``y`` whenever the
    LRP rules conserve.

    Parameters
    ----------
    eps : float
        Norms below ``eps`` raise an error (the cosine is undefined for zero embeddings).
    """
    name = 'cosine'

    def __init__(self, eps: float = 1e-12):
        self.eps = eps

    def scale(self, emb_a, emb_b):
        norm_a = emb_a.norm(dim=1)
        norm_b = emb_b.norm(dim=1)
        if bool((norm_a < self.eps).any()) or bool((norm_b < self.eps).any()):
            raise ValueError('CosineSimilarity: an embedding has (near) zero norm; the cosine is undefined')
        return 1.0 / (norm_a * norm_b)


class BilinearSimilarity(Similarity):
    """Bilinear similarity ``y = phi(x)^T W phi(x')`` with a fixed matrix ``W``.

    BiLRP of the bilinear form is ``R = F(x)^T W F(x')``: unit pair ``(m, n)`` receives ``phi_m W_mn phi'_n``,
    which is then explained on both sides. This needs no LRP rule for ``W`` and conserves exactly. An alignment
    transform ``f -> f A`` applied to both sides is the special case ``W = A A^T``.

    Parameters
    ----------
    weight : torch.Tensor
        Matrix of shape ``(h_a, h_b)``.
    normalize : bool
        Divide by ``|phi(x)| |phi(x')|`` (a bilinear cosine). Default False.
    """
    name = 'bilinear'

    def __init__(self, weight: torch.Tensor, normalize: bool = False):
        weight = torch.as_tensor(weight)
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f'BilinearSimilarity: weight must be a floating 2-D matrix, got {tuple(weight.shape)} '
                             f'{weight.dtype}')
        self.weight = weight.detach()
        self.normalize = normalize

    def matrix(self, emb_a, emb_b):
        return self.weight.to(device=emb_a.device, dtype=emb_a.dtype)

    def scale(self, emb_a, emb_b):
        if self.normalize:
            return CosineSimilarity().scale(emb_a, emb_b)
        return super().scale(emb_a, emb_b)

    def __repr__(self) -> str:
        return f'BilinearSimilarity(weight={tuple(self.weight.shape)}, normalize={self.normalize})'


#: similarities by name (:attr:`Similarity.name`); those built without arguments can be asked for by name
SIMILARITIES: dict = {}


def register_similarity(cls: type) -> type:
    """Class decorator: make a :class:`Similarity` subclass available by its :attr:`~Similarity.name`.

    Raises
    ------
    TypeError
        If ``cls`` is not a :class:`Similarity` subclass.
    ValueError
        If its name is already taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Similarity)):
        raise TypeError(f'register_similarity takes a Similarity subclass, got {cls!r}')
    if SIMILARITIES.get(cls.name, cls) is not cls:
        raise ValueError(f'similarity name {cls.name!r} is taken by {SIMILARITIES[cls.name].__name__}')
    SIMILARITIES[cls.name] = cls
    return cls


for _cls in (DotSimilarity, CosineSimilarity, BilinearSimilarity):
    register_similarity(_cls)


def named_similarities() -> list:
    """The names :func:`get_similarity` resolves on their own (similarities built without arguments)."""
    names = []
    for name, cls in SIMILARITIES.items():
        try:
            cls()
        except TypeError:
            continue
        names.append(name)
    return sorted(names)


def get_similarity(similarity: Union[str, Similarity, torch.Tensor]) -> Similarity:
    """Resolve a registered name (``'dot'``, ``'cosine'``, see :data:`SIMILARITIES`), a matrix (bilinear) or a
    :class:`Similarity` instance."""
    if isinstance(similarity, Similarity):
        return similarity
    if isinstance(similarity, torch.Tensor):
        return BilinearSimilarity(similarity)
    if isinstance(similarity, str) and similarity in named_similarities():
        return SIMILARITIES[similarity]()
    raise ValueError(f'unknown similarity {similarity!r}: use one of {named_similarities()}, a weight matrix or a '
                     'Similarity')
