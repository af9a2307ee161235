r"""Human-alignment heads: an affine transform on top of an embedding model, loadable and fittable.

An *alignment transform* maps the penultimate features :math:`f` of a model (row vectors) to

.. math::

    \tilde f = \frac{f - \mu}{\sigma}\,W + b,

with scalars :math:`\mu, \sigma`, a matrix :math:`W \in \mathbb{R}^{D \times D}` and a bias :math:`b`. This is the
format of the gLocal transforms (Muttenthaler et al., "Improving neural network representations using human
similarity judgments", NeurIPS 2023) distributed with the ``thingsvision`` project. Because :math:`\mu` and
:math:`\sigma` are scalars, the whole step is *one* affine layer
:math:`\tilde f = f\,W' + b'` with :math:`W' = W / \sigma` and :math:`b' = b - (\mu / \sigma)\,\mathbf{1}^\top W`
(:func:`fold_transform`), held by :class:`AffineAlignment`, a :class:`torch.nn.Linear`.

LRP through the head
--------------------
:class:`AlignedModel` appends the alignment layer to the backbone (registered *after* it, so Zennit's first-layer
rules still go to the backbone's first layer). The head's rule is LRP-:math:`\epsilon` (:func:`alignment_rule`,
put in front of any composite by :func:`with_alignment_rule`): the transform has weights of both signs and mixes
the whole feature vector, the setting LRP-0/:math:`\epsilon` is meant for (upper layers; Montavon et al.,
"Layer-wise relevance propagation: an overview", 2019), while :math:`z^+`/:math:`\gamma` would favor positive
weights and change what the transform means. BiLRP seeds aligned unit :math:`k` with
:math:`R_k = \tilde f_k s_k`; with the bias *kept* in the denominator (the default)

.. math::

    R_i = f_i \sum_k \frac{W'_{ik}}{\tilde f_k + \epsilon\,\mathrm{sign}(\tilde f_k)} R_k
        \approx f_i \sum_k W'_{ik} s_k,

the exact contribution of feature :math:`i` to the linear part; it never divides by a small quantity, and
:math:`\sum_i R_i = \sum_k (\tilde f_k - b'_k) s_k`: the bias keeps its share. For a pair, BiLRP then explains
:math:`c \sum_k z_k z'_k` with :math:`z = \tilde f - b'`; the bias terms :math:`c \sum_k (b'_k z'_k + z_k b'_k +
b'^2_k)` involve at most one input, are no pairwise relevance and make up the conservation gap ``delta`` (of
either sign). With ``zero_params=['bias']`` the denominator is
:math:`z_k = \tilde f_k - b'_k` instead, so the bias's share is pushed onto the features and
:math:`\sum_i R_i = \sum_k R_k` (full conservation), but the multipliers :math:`\tilde f_k / z_k` explode where
:math:`|z_k| \ll |b'_k|` — typical of gLocal transforms, whose folded bias contains the centring
:math:`-(\mu/\sigma)\mathbf{1}^\top W`. The shares of :mod:`zennit_bilrp.analysis.context` are normalized by the
explained
relevance, so with the default rule they describe the pairwise (bilinear) part of the aligned similarity.

Head or bilinear similarity?
----------------------------
The engine also explains the bilinear similarity :math:`y = f^\top A A^\top f'`
(:class:`~zennit_bilrp.core.similarity.BilinearSimilarity` with ``W = A A^T``), which is the *linear* alignment
without the head and needs no rule for it: unit pair :math:`(m, n)` gets :math:`f_m (AA^\top)_{mn} f'_n`, exactly
conserved. Use the bilinear form when the transform has no bias and you compare *dot products* of aligned
features; it is exact and rule-free, but ``h`` stays the backbone's width. Use the head (:class:`AlignedModel`)
when the transform has a bias, when the aligned features are compared with the *cosine* (the gLocal setting:
norms of the aligned features, not of :math:`f`), or when the aligned embedding is what other code consumes;
its factors explain the aligned units directly.

Fitting from triplets
---------------------
:func:`fit_alignment` fits :math:`W, b` on odd-one-out triplets with the gLocal objective
(:func:`alignment_loss`): softmax cross-entropy over the three pairs of each triplet with dot-product similarities
of the transformed embeddings (global term), optionally a local term keeping the cosine-similarity structure of a
batch close to the original one, and a penalty pulling :math:`W` towards a scaled identity.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from zennit.composites import MixedComposite, NameMapComposite
from zennit.rules import Epsilon

__all__ = ['AffineAlignment', 'AlignedModel', 'fold_transform', 'load_glocal_transform', 'save_glocal_transform',
           'alignment_rule', 'with_alignment_rule', 'penultimate_resnet', 'triplet_accuracy', 'alignment_loss',
           'fit_alignment', 'AlignmentFit', 'odd_one_out_triplets', 'GLOCAL_HELP']

PathLike = Union[str, os.PathLike]

#: where to get a published transform (nothing is downloaded by this package)
GLOCAL_HELP = (
    'gLocal transforms are distributed by the thingsvision project (https://github.com/ViCCo-Group/thingsvision, '
    'see its "Human alignment" docs, `extractor.align(..., alignment_type="gLocal")`) as .npz files with arrays '
    '`weights` (D x D), `bias` (D, optional), scalar `mean` and `std`. Download the file for your model (e.g. '
    'torchvision ResNet-50, penultimate avgpool features, D = 2048) yourself and pass its local path'
)


class AffineAlignment(nn.Linear):
    r"""The folded alignment transform :math:`\tilde f = f\,W' + b'` as an ``nn.Linear`` (``weight = W'^T``).

    Parameters
    ----------
    weights : torch.Tensor
        :math:`W'` of shape ``(D_in, D_out)`` in the row-vector convention (``f -> f @ weights``).
    bias : torch.Tensor, optional
        :math:`b'` of shape ``(D_out,)`` (default zeros).
    """

    def __init__(self, weights: torch.Tensor, bias: Optional[torch.Tensor] = None):
        weights = torch.as_tensor(weights)
        if weights.dim() != 2 or not weights.is_floating_point():
            raise ValueError(f'AffineAlignment: weights must be a floating 2-D matrix (D_in, D_out), got '
                             f'{tuple(weights.shape)} {weights.dtype}')
        d_in, d_out = weights.shape
        super().__init__(d_in, d_out, bias=True, dtype=weights.dtype)
        with torch.no_grad():
            self.weight.copy_(weights.T)
            if bias is None:
                self.bias.zero_()
            else:
                bias = torch.as_tensor(bias, dtype=weights.dtype)
                if bias.shape != (d_out,):
                    raise ValueError(f'AffineAlignment: bias has shape {tuple(bias.shape)}, expected ({d_out},)')
                self.bias.copy_(bias)

    @classmethod
    def identity(cls, dim: int, dtype: torch.dtype = torch.float32) -> AffineAlignment:
        """The identity transform on ``dim`` features."""
        return cls(torch.eye(dim, dtype=dtype))

    @property
    def matrix(self) -> torch.Tensor:
        """:math:`W'` in the row-vector convention, ``(D_in, D_out)``."""
        return self.weight.detach().T

    def bilinear_weight(self) -> torch.Tensor:
        """``W' W'^T``: the matrix of the equivalent bilinear similarity of the *linear* part (see module doc)."""
        return self.matrix @ self.matrix.T


class AlignedModel(nn.Module):
    """An embedding model followed by an alignment transform: ``x -> alignment(model(x))``.

    Parameters
    ----------
    model : torch.nn.Module
        Maps inputs to features ``(N, D)`` (e.g. a torchvision ResNet-50 with ``fc = Identity``; see
        :func:`penultimate_resnet`).
    alignment : AffineAlignment or torch.nn.Linear
        The transform on the features.
    """

    def __init__(self, model: nn.Module, alignment: nn.Linear):
        super().__init__()
        if not isinstance(alignment, nn.Linear):
            raise TypeError(f'alignment must be an nn.Linear (e.g. AffineAlignment), got {type(alignment).__name__}')
        self.model = model  # registered first: first-layer rules go to the backbone
        self.alignment = alignment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model(x)
        if features.dim() != 2 or features.shape[1] != self.alignment.in_features:
            raise ValueError(f'the backbone returns features of shape {tuple(features.shape)}, but the alignment '
                             f'expects (N, {self.alignment.in_features})')
        return self.alignment(features)


def alignment_rule(epsilon: float = 1e-6, zero_params=None):
    """The LRP rule of the alignment head: Zennit's ``Epsilon(epsilon)`` with the bias kept (see module docstring);
    ``zero_params=['bias']`` gives the fully conserving but unstable variant."""
    return Epsilon(epsilon=epsilon, zero_params=list(zero_params) if zero_params else None)


def with_alignment_rule(composite, model: nn.Module, rule=None):
    """A composite that gives every alignment layer of ``model`` ``rule`` and all other layers ``composite``'s rules.

    Parameters
    ----------
    composite : zennit.core.Composite
        Rules for the backbone (its canonizers are kept).
    model : torch.nn.Module
        The model (e.g. :class:`AlignedModel`) whose :class:`AffineAlignment` / ``AlignedModel.alignment`` layers
        get ``rule``.
    rule : zennit.core.Hook, optional
        Default :func:`alignment_rule`.

    Returns
    -------
    zennit.composites.MixedComposite
    """
    names = [name for name, module in model.named_modules()
             if isinstance(module, AffineAlignment) or name == 'alignment' or name.endswith('.alignment')]
    if not names:
        raise ValueError('with_alignment_rule: the model has no alignment layer (AffineAlignment or a child named '
                         '"alignment")')
    rule = alignment_rule() if rule is None else rule
    return MixedComposite([NameMapComposite([(tuple(names), rule)]), composite])


def penultimate_resnet(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet that returns its pooled penultimate features (``fc`` replaced by Identity).

    For ResNet-50 these are the 2048-d ``avgpool`` outputs on which gLocal transforms act.
    """
    if not hasattr(model, 'fc') or not hasattr(model, 'avgpool'):
        raise TypeError(f'penultimate_resnet expects a torchvision ResNet (with avgpool and fc), got '
                        f'{type(model).__name__}')
    model = copy.deepcopy(model)
    model.fc = nn.Identity()
    return model


def fold_transform(weights, bias=None, mean: float = 0.0, std: float = 1.0):
    r"""Fold :math:`\tilde f = ((f - \mu)/\sigma) W + b` into :math:`f W' + b'`.

    Returns
    -------
    tuple of torch.Tensor
        :math:`W' = W / \sigma` ``(D_in, D_out)`` and :math:`b' = b - (\mu/\sigma) \mathbf{1}^\top W` ``(D_out,)``.
    """
    weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    if weights.dim() != 2:
        raise ValueError(f'weights must be a 2-D matrix, got shape {tuple(weights.shape)}')
    bias = torch.zeros(weights.shape[1], dtype=torch.float64) if bias is None else torch.as_tensor(
        np.asarray(bias), dtype=torch.float64).reshape(-1)
    if bias.shape != (weights.shape[1],):
        raise ValueError(f'bias has {bias.numel()} entries but weights map to {weights.shape[1]} features')
    mean, std = float(mean), float(std)
    if not math.isfinite(std) or std == 0.0 or not math.isfinite(mean):
        raise ValueError(f'mean and std must be finite and std non-zero, got mean={mean}, std={std}')
    return weights / std, bias - (mean / std) * weights.sum(dim=0)


def _scalar(archive, key: str, path) -> float:
    value = np.asarray(archive[key])
    if value.size != 1:
        raise ValueError(f'{path}: `{key}` must be a scalar (gLocal standardizes with one mean and one std), got '
                         f'shape {value.shape}')
    return float(value.reshape(()))


def load_glocal_transform(path: PathLike, dtype: torch.dtype = torch.float32) -> AffineAlignment:
    """Load a gLocal transform (``.npz`` with ``weights``, optional ``bias``, scalar ``mean`` and ``std``), folded.

    Parameters
    ----------
    path : str or os.PathLike
        Local path of the ``.npz`` file. Nothing is downloaded.
    dtype : torch.dtype
        Parameter dtype of the returned layer.

    Returns
    -------
    AffineAlignment
        ``f -> ((f - mean) / std) @ weights + bias`` as one affine layer.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (the message says where to get it).
    ValueError
        If arrays are missing or have the wrong shapes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no gLocal transform at {path!r}. {GLOCAL_HELP}.')
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        missing = {'weights', 'mean', 'std'} - keys
        if missing:
            raise ValueError(f'{path}: missing arrays {sorted(missing)} (found {sorted(keys)}); expected `weights` '
                             '(D x D), optional `bias` (D), scalar `mean` and `std`')
        weights = np.asarray(archive['weights'])
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
            raise ValueError(f'{path}: `weights` must be a square D x D matrix, got shape {weights.shape}')
        bias = np.asarray(archive['bias']).reshape(-1) if 'bias' in keys else None
        if bias is not None and bias.shape != (weights.shape[1],):
            raise ValueError(f'{path}: `bias` has shape {bias.shape}, expected ({weights.shape[1]},)')
        mean, std = _scalar(archive, 'mean', path), _scalar(archive, 'std', path)
    folded_w, folded_b = fold_transform(weights, bias, mean, std)
    return AffineAlignment(folded_w.to(dtype), folded_b.to(dtype))


def save_glocal_transform(path: PathLike, weights, bias=None, mean: float = 0.0, std: float = 1.0,
                          extra: Optional[Mapping[str, np.ndarray]] = None) -> Path:
    r"""Write a transform in the gLocal ``.npz`` format (row-vector ``weights``, ``bias``, scalar ``mean``, ``std``).

    Parameters
    ----------
    path : str or os.PathLike
        The file; ``.npz`` is appended when missing, as :func:`numpy.savez` does.
    weights, bias, mean, std :
        The unfolded transform :math:`\tilde f = ((f - \mu)/\sigma) W + b`.
    extra : mapping of str to array, optional
        More arrays to store alongside (readers of the gLocal format ignore them).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    weights = np.asarray(torch.as_tensor(weights).detach().cpu().numpy(), dtype=np.float64)
    bias = np.zeros(weights.shape[1]) if bias is None else np.asarray(torch.as_tensor(bias).detach().cpu().numpy(),
                                                                      dtype=np.float64)
    arrays = {'weights': weights, 'bias': bias, 'mean': np.float64(mean), 'std': np.float64(std)}
    clash = set(arrays) & set(extra or {})
    if clash:
        raise ValueError(f'save_glocal_transform: extra arrays may not be named {sorted(clash)}')
    path = Path(path)
    path = path if path.suffix == '.npz' else path.with_name(path.name + '.npz')
    np.savez(path, **arrays, **dict(extra or {}))
    return path


def _check_triplets(triplets: torch.Tensor, n: int, name: str) -> torch.Tensor:
    triplets = torch.as_tensor(triplets)
    if triplets.dim() != 2 or triplets.shape[1] != 3 or triplets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f'{name} must be an integer tensor (T, 3), got {tuple(triplets.shape)} {triplets.dtype}')
    if triplets.numel() and (int(triplets.min()) < 0 or int(triplets.max()) >= n):
        raise ValueError(f'{name} index features outside 0..{n - 1}')
    return triplets.long()


def _pair_logits(embedding: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Dot-product similarities of the pairs (0,1), (0,2), (1,2) of each triplet ``(i, j, k)``: ``(T, 3)``.

    The convention: the human chose ``k`` as the odd one out, so the pair ``(i, j)`` (logit 0) is the target.
    """
    a, b, c = (embedding[triplets[:, t]] for t in range(3))
    return torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], dim=1)


def odd_one_out_triplets(embedding: torch.Tensor, n_triplets: int, seed: int = 0,
                         temperature: Optional[float] = None) -> torch.Tensor:
    r"""Odd-one-out triplets judged with a known ("human") embedding, ordered so that the odd one is last.

    For three distinct random items the pair with the largest dot product is kept together (or, with a
    ``temperature`` :math:`T`, a pair is drawn with probability :math:`\operatorname{softmax}(S/T)`, a noisy judge);
    the remaining item is the odd one out.

    Returns
    -------
    torch.Tensor
        ``(n_triplets, 3)`` int64 indices ``(i, j, k)`` with ``k`` the odd one out.
    """
    n = embedding.shape[0]
    if n < 3:
        raise ValueError(f'need at least 3 items for triplets, got {n}')
    gen = torch.Generator().manual_seed(seed)
    items = torch.argsort(torch.rand(n_triplets, n, generator=gen), dim=1)[:, :3]
    logits = _pair_logits(embedding.detach().double(), items)
    if temperature is None:
        choice = logits.argmax(dim=1)
    else:
        choice = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=gen)[:, 0]
    # pair 0 = (i, j), 1 = (i, k), 2 = (j, k): reorder so that the chosen pair comes first
    order = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 2, 0]])[choice]
    return items.gather(1, order)


def triplet_accuracy(features: torch.Tensor, triplets: torch.Tensor, transform: Optional[nn.Module] = None) -> float:
    """Odd-one-out accuracy: fraction of triplets ``(i, j, k)`` whose pair ``(i, j)`` has the largest dot product.

    Parameters
    ----------
    features : torch.Tensor
        Features ``(N, D)``.
    triplets : torch.Tensor
        ``(T, 3)`` indices; by convention the third item is the odd one out chosen by humans.
    transform : torch.nn.Module, optional
        Applied to the features first (e.g. an :class:`AffineAlignment`).
    """
    triplets = _check_triplets(triplets, features.shape[0], 'triplets')
    with torch.no_grad():
        emb = features if transform is None else transform(features.to(next(transform.parameters()).dtype))
        return float((_pair_logits(emb, triplets).argmax(dim=1) == 0).double().mean())


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``(B, B - 1)`` off-diagonal entries of a square ``(B, B)`` matrix, row by row (diagonal masked out)."""
    size = matrix.shape[0]
    return matrix.flatten()[1:].reshape(size - 1, size + 1)[:, :-1].reshape(size, size - 1)


def alignment_loss(weights: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, triplets: torch.Tensor,
                   local_features: Optional[torch.Tensor] = None, alpha: float = 0.0, reg: float = 1e-3,
                   temperature: float = 0.1) -> torch.Tensor:
    r"""The gLocal objective on standardized features.

    .. math::

        L = L_\mathrm{global} + \alpha\,L_\mathrm{local} + \lambda \big\|W - \tfrac{\mathrm{tr}\,W}{D} I\big\|_F^2

    - :math:`L_\mathrm{global} = -\frac1T \sum_{(i,j,k)} \log \operatorname{softmax}(S_{ij}, S_{ik}, S_{jk})_1`
      with :math:`S = (FW + b)(FW + b)^\top` (dot products of transformed embeddings; ``k`` is the odd one out).
    - :math:`L_\mathrm{local} = \frac1B \sum_i \mathrm{KL}(p_i \,\|\, q_i)` with
      :math:`p_i = \operatorname{softmax}_{j \ne i}(\cos(f_i, f_j)/\tau)` before and :math:`q_i` the same after the
      transform, on a batch ``local_features`` (the diagonal is masked out).
    - The last term pulls :math:`W` towards the scaled identity :math:`(\mathrm{tr}\,W / D)\,I`.
    """
    emb = features @ weights + bias
    logits = _pair_logits(emb, triplets)
    loss = nn.functional.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))
    if alpha > 0.0 and local_features is not None and local_features.shape[0] > 1:
        before = nn.functional.normalize(local_features, dim=1)
        after = nn.functional.normalize(local_features @ weights + bias, dim=1)
        log_p = torch.log_softmax(_off_diagonal(before @ before.T) / temperature, dim=1)
        log_q = torch.log_softmax(_off_diagonal(after @ after.T) / temperature, dim=1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
        loss = loss + alpha * kl
    dim = weights.shape[0]
    target = torch.diagonal(weights).sum() / dim * torch.eye(dim, dtype=weights.dtype, device=weights.device)
    return loss + reg * (weights - target).pow(2).sum()


#: the accuracies of an :class:`AlignmentFit`, stored as scalars by :meth:`AlignmentFit.save`
_FIT_SCORES = ('train_accuracy', 'test_accuracy', 'baseline_test_accuracy')


@dataclass
class AlignmentFit:
    """Result of :func:`fit_alignment`.

    Attributes
    ----------
    transform : AffineAlignment
        The fitted transform, folded (acts on raw features).
    weights, bias : torch.Tensor
        Unfolded :math:`W, b` (act on standardized features).
    mean, std : float
        The scalar standardization.
    train_accuracy, test_accuracy : float
        Triplet accuracy of the aligned features on training and held-out triplets.
    baseline_test_accuracy : float
        Held-out accuracy of the raw (unaligned) features.
    history : list of float
        Training loss per epoch.
    """
    transform: AffineAlignment
    weights: torch.Tensor
    bias: torch.Tensor
    mean: float
    std: float
    train_accuracy: float
    test_accuracy: float
    baseline_test_accuracy: float
    history: list = field(default_factory=list)

    def save(self, path: PathLike) -> Path:
        """Save in the gLocal ``.npz`` format (loadable with :func:`load_glocal_transform`), with the accuracies and
        the loss history as extra arrays (reload all with :meth:`load`); returns the path written."""
        record = {name: np.float64(getattr(self, name)) for name in _FIT_SCORES}
        record['history'] = np.asarray(self.history, dtype=np.float64)
        return save_glocal_transform(path, self.weights, self.bias, self.mean, self.std, extra=record)

    @classmethod
    def load(cls, path: PathLike) -> AlignmentFit:
        """Read a fit written by :meth:`save` (float64 tensors; the transform as :func:`fit_alignment` returns it).

        Raises
        ------
        ValueError
            If the file lacks the fit record (a plain gLocal file: read it with :func:`load_glocal_transform`).
        """
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
        missing = {'weights', 'bias', 'mean', 'std', 'history', *_FIT_SCORES} - set(data)
        if missing:
            raise ValueError(f'{path} is not an AlignmentFit file (missing arrays {sorted(missing)}); read a plain '
                             'gLocal transform with load_glocal_transform')
        weights, bias = torch.from_numpy(data['weights']).double(), torch.from_numpy(data['bias']).double()
        mean, std = float(data['mean']), float(data['std'])
        scores = {name: float(data[name]) for name in _FIT_SCORES}
        return cls(transform=AffineAlignment(*fold_transform(weights, bias, mean, std)), weights=weights, bias=bias,
                   mean=mean, std=std, history=[float(v) for v in data['history']], **scores)


def fit_alignment(features: torch.Tensor, triplets: torch.Tensor, test_triplets: Optional[torch.Tensor] = None,
                  alpha: float = 0.0, reg: float = 1e-3, temperature: float = 0.1, lr: float = 1e-2,
                  epochs: int = 100, batch_size: int = 256, local_batch_size: int = 128, seed: int = 0,
                  progress: bool = False) -> AlignmentFit:
    r"""Fit an affine alignment transform to odd-one-out triplets (the gLocal objective, :func:`alignment_loss`).

    Features are standardized with one scalar mean and std (as in the gLocal format), then :math:`W` (initialized
    to the identity) and :math:`b` (zeros) are fitted with Adam on mini-batches of triplets; with ``alpha > 0`` each
    step also draws ``local_batch_size`` features for the local term.

    Parameters
    ----------
    features : torch.Tensor
        Penultimate features ``(N, D)`` of the images the triplets refer to.
    triplets : torch.Tensor
        Training triplets ``(T, 3)``; the third entry is the odd one out.
    test_triplets : torch.Tensor, optional
        Held-out triplets for the reported accuracy (default: the training triplets).
    alpha : float
        Weight of the local term (default 0: global term only).
    reg : float
        Weight :math:`\lambda` of the pull towards a scaled identity (default 1e-3).
    temperature : float
        Softmax temperature :math:`\tau` of the local term (default 0.1).
    lr, epochs, batch_size : float, int, int
        Adam learning rate (default 1e-2), passes over the training triplets (100) and triplets per step (256).
    local_batch_size : int
        Features per step for the local term (default 128).
    seed : int
        Seed of the mini-batch order.
    progress : bool
        Show a tqdm bar over epochs.

    Returns
    -------
    AlignmentFit
    """
    triplets, test_triplets = _check_fit_arguments(features, triplets, test_triplets, alpha, reg, temperature, lr,
                                                   epochs, batch_size)
    features = features.detach().double()
    mean, std = float(features.mean()), float(features.std())
    if std == 0.0:
        raise ValueError('features are constant; cannot standardize')
    weights, bias, history = _optimize(
        (features - mean) / std, triplets, alpha=alpha, reg=reg, temperature=temperature, lr=lr, epochs=epochs,
        batch_size=batch_size, local_batch_size=local_batch_size, seed=seed, progress=progress)
    transform = AffineAlignment(*fold_transform(weights, bias, mean, std))
    return AlignmentFit(
        transform=transform, weights=weights, bias=bias, mean=mean, std=std,
        train_accuracy=triplet_accuracy(features, triplets, transform),
        test_accuracy=triplet_accuracy(features, test_triplets, transform),
        baseline_test_accuracy=triplet_accuracy(features, test_triplets),
        history=history,
    )


def _check_fit_arguments(features: torch.Tensor, triplets: torch.Tensor, test_triplets: Optional[torch.Tensor],
                         alpha: float, reg: float, temperature: float, lr: float, epochs: int,
                         batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refuse bad arguments of :func:`fit_alignment`; return the checked training and test triplets."""
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f'features must be a floating (N, D) tensor, got {tuple(features.shape)} {features.dtype}')
    n = features.shape[0]
    triplets = _check_triplets(triplets, n, 'triplets')
    test_triplets = triplets if test_triplets is None else _check_triplets(test_triplets, n, 'test_triplets')
    if len(triplets) == 0:
        raise ValueError('fit_alignment needs at least one training triplet')
    for name, value in (('alpha', alpha), ('reg', reg)):
        if value < 0:
            raise ValueError(f'{name} must be non-negative, got {value}')
    if temperature <= 0 or lr <= 0 or epochs < 1 or batch_size < 1:
        raise ValueError('temperature and lr must be positive, epochs and batch_size at least 1')
    return triplets, test_triplets


def _optimize(standard: torch.Tensor, triplets: torch.Tensor, alpha: float, reg: float, temperature: float,
              lr: float, epochs: int, batch_size: int, local_batch_size: int, seed: int,
              progress: bool) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Adam on :func:`alignment_loss` from :math:`W = I`, :math:`b = 0`: ``(W, b, loss per epoch)``."""
    n, dim = standard.shape
    weights = torch.eye(dim, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weights, bias], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(epochs), desc='fit alignment', disable=not progress):
        order = torch.randperm(len(triplets), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = triplets[order[start:start + batch_size]]
            local = None
            if alpha > 0:
                local = standard[torch.randperm(n, generator=gen)[:local_batch_size]]
            loss = alignment_loss(weights, bias, standard, batch, local, alpha, reg, temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        history.append(total / len(triplets))
    return weights.detach(), bias.detach(), history
