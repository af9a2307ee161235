r"""BiLRP as a Captum attribution method.

:class:`BiLRPAttribution` subclasses :class:`captum.attr.GradientAttribution` and follows Captum's calling
conventions, computing everything with the BiLRP engine (:class:`zennit_bilrp.core.engine.BiLRP`). For a similarity
:math:`y(x, x') = c\,\phi(x)^\top G\,\phi(x')` it returns either

- the **marginal** of the inputs, shaped exactly like them (the default; what Captum tooling consumes):
  :math:`m_i(x) = \sum_{i'} R_{ii'}`, computed exactly with one LRP pass of :math:`y` with :math:`x'` held fixed;
- the **pairwise** relevance :math:`R` pooled to patches, ``(B, P_a, P_b)`` (``output='pairwise'``).

Both sum to the same total, and ``return_convergence_delta=True`` returns :math:`\delta = y - \sum R` per pair.

How the pair is passed
----------------------
``attribute(inputs, partner=None, ...)``:

- *partner mode* (``partner`` given, ``inputs`` a tensor or a 1-tuple): explain ``y(inputs[i], partner[i])``;
  only ``inputs`` are perturbed by Captum tooling (NoiseTunnel, infidelity, sensitivity_max), the partner stays
  fixed. A partner with fewer rows ``M`` than the inputs ``N = k M`` is expanded with
  ``partner.repeat_interleave(k)``, the expansion Captum applies to inputs; so a partner of the original batch
  size keeps pairing correctly when Captum tooling enlarges the batch. The partner may also be given once, to the
  constructor.
- *pair mode* (``inputs = (x_a, x_b)``, no partner): both inputs are explained (and perturbed by the tooling);
  the marginal output is the tuple ``(marginal_a, marginal_b)``.

For ``captum.metrics.infidelity`` use :meth:`BiLRPAttribution.similarity_function` as ``forward_func`` (it
returns ``y`` per row and pairs rows like ``attribute`` does).

Where Captum tooling cannot take the pairwise output
----------------------------------------------------
``NoiseTunnel`` and ``sensitivity_max`` take any per-sample output, so they also work with ``output='pairwise'``
(tested). ``infidelity`` multiplies attributions with input perturbations and ``visualize_image_attr`` draws an
image-shaped map: both need the marginal. The nearest pairwise view for ``visualize_image_attr`` is one row of the
pairwise relevance (what patch ``p`` of ``x`` matches in ``x'``): ``explain(...).relevance_grid()[i, r, c]``,
upsampled to the image size of ``x'``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import nn

from ..core.engine import BiLRP, BiLRPResult
from ..core.pooling import Pooling

__all__ = ['BiLRPAttribution', 'ForwardModule', 'expand_partner']

TensorOrTuple = Union[torch.Tensor, tuple[torch.Tensor, ...]]
OUTPUTS = ('marginal', 'pairwise')


class ForwardModule(nn.Module):
    """A forward function with additional arguments as an ``nn.Module`` whose sub-modules Zennit can hook.

    ``forward(x)`` calls ``func(x, *args)`` with the arguments set by :meth:`set_args`. Tensor arguments whose first
    axis has ``batch_size`` rows (one per explained pair) are tiled to the batch actually forwarded: the engine sends
    ``x_a`` and ``x_b`` through one forward as ``cat([x_a, x_b])``, so both inputs of a pair use the same row.

    Parameters
    ----------
    func : callable
        ``func(x, *args) -> embeddings`` (or feature maps pooled by the head).
    modules : sequence of nn.Module
        The modules ``func`` calls; registered as children so that composites and canonizers reach them.
    """

    def __init__(self, func: Callable, modules: Sequence[nn.Module]):
        super().__init__()
        if not modules:
            raise ValueError('ForwardModule: no modules given; a forward function must call at least one nn.Module '
                             'whose layers LRP rules can be attached to')
        self.func = func
        self.hooked = nn.ModuleList(modules)
        self.args: tuple = ()
        self.batch_size: Optional[int] = None

    def set_args(self, args: tuple, batch_size: Optional[int]) -> None:
        """Set the additional arguments and the number of pairs their batch axis refers to."""
        self.args = tuple(args)
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = self.args
        if self.batch_size:
            rows = x.shape[0]
            tiled = []
            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == self.batch_size \
                        and rows != self.batch_size:
                    if rows % self.batch_size:
                        raise ValueError(f'cannot tile an argument with {self.batch_size} rows to a batch of {rows}')
                    arg = arg.repeat(rows // self.batch_size, *([1] * (arg.dim() - 1)))
                tiled.append(arg)
            args = tuple(tiled)
        return self.func(x, *args)


def _find_modules(func: Callable) -> list:
    """The ``nn.Module`` objects a function can reach: a bound method's owner, closure and referenced globals."""
    found = []
    owner = getattr(func, '__self__', None)
    if isinstance(owner, nn.Module):
        found.append(owner)
    target = getattr(func, '__func__', func)
    try:
        variables = inspect.getclosurevars(target)
        candidates = list(variables.nonlocals.values()) + list(variables.globals.values())
    except TypeError:
        candidates = []
    for value in candidates:
        if isinstance(value, nn.Module) and all(value is not other for other in found):
            found.append(value)
    return found


def expand_partner(partner: torch.Tensor, rows: int) -> torch.Tensor:
    """Pair ``rows`` inputs with ``partner``: as is if sizes agree, else ``repeat_interleave`` (Captum's expansion).

    Raises
    ------
    ValueError
        If the partner's batch size does not divide ``rows``.
    """
    if not isinstance(partner, torch.Tensor):
        raise TypeError(f'partner must be a torch.Tensor, got {type(partner).__name__}')
    if partner.dim() == 0 or partner.shape[0] == 0:
        raise ValueError(f'partner must be a non-empty batch (M, ...), got shape {tuple(partner.shape)}')
    count = partner.shape[0]
    if count == rows:
        return partner
    if rows % count:
        raise ValueError(f'the partner has {count} rows, which does not divide the {rows} inputs; give one partner '
                         'per input, a single partner, or the batch Captum tooling expanded the inputs from')
    return partner.repeat_interleave(rows // count, dim=0)


def _format_args(additional_forward_args: Any) -> tuple:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


class BiLRPAttribution(GradientAttribution):
    r"""BiLRP explanations of a similarity model with Captum's ``attribute`` conventions.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The embedding model :math:`\phi`, or a function ``f(x, *additional_forward_args)`` returning embeddings.
        A function is wrapped in a :class:`ForwardModule` so that the composite can hook the modules it calls;
        they are found automatically (bound method owner, closure variables, referenced globals) or given by
        ``modules``. Operations of a function outside modules are backpropagated as plain gradients, so keep
        them relevance-preserving (indexing, reshaping, masking with 0/1 values).
    composite : zennit.core.Composite, optional
        LRP rules (default :func:`zennit_bilrp.lrp.composites.bilrp_composite`).
    canonizers : list, optional
        Extra Zennit canonizers (e.g. :func:`zennit_bilrp.lrp.canonizers.canonizers_for`).
    similarity : {'dot', 'cosine'} or Similarity or torch.Tensor
        The similarity explained.
    head : str or Head
        How the model output becomes the embedding (see :mod:`zennit_bilrp.core.heads`).
    partner : torch.Tensor, optional
        Default partner inputs (used when ``attribute`` gets none and ``inputs`` is not a pair).
    pooling : int or Pooling, optional
        Default pooling of the pairwise output (``None``: per position, channels summed).
    modules : sequence of nn.Module, optional
        The modules a forward *function* calls (overrides the automatic search).
    **engine_kwargs
        Passed to :class:`~zennit_bilrp.core.engine.BiLRP` (``method``, ``chunk_size``, ``memory_budget``, ``strict``,
        ...).

    Examples
    --------
    >>> from captum.attr import NoiseTunnel
    >>> explainer = BiLRPAttribution(model, composite=EpsilonPlus(), similarity='cosine')
    >>> heat = explainer.attribute(x, partner=x_ref)                           # shaped like x
    >>> pairs = explainer.attribute((x, x_ref), output='pairwise', pooling=8)  # (B, P, P)
    >>> smooth = NoiseTunnel(explainer).attribute(x, partner=x_ref, nt_type='smoothgrad', nt_samples=8)
    """

    def __init__(self, forward_func: Union[nn.Module, Callable], composite=None, canonizers=None,
                 similarity='dot', head='none', partner: Optional[torch.Tensor] = None,
                 pooling: Union[None, int, Pooling] = None, modules: Optional[Sequence[nn.Module]] = None,
                 **engine_kwargs):
        if not callable(forward_func):
            raise TypeError(f'forward_func must be an nn.Module or a callable, got {type(forward_func).__name__}')
        super().__init__(forward_func)
        if isinstance(forward_func, nn.Module) and modules is None:
            self.model = ForwardModule(forward_func, [forward_func])
        else:
            found = list(modules) if modules is not None else _find_modules(forward_func)
            if not found:
                raise ValueError(
                    'forward_func is a function that reaches no nn.Module (searched its bound object, closure and '
                    'globals); pass the modules it calls as modules=[...]'
                )
            self.model = ForwardModule(forward_func, found)
        self.engine = BiLRP(self.model, composite=composite, canonizers=canonizers, similarity=similarity,
                            head=head, **engine_kwargs)
        self.partner = partner
        self.pooling = pooling

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: LRP relevance is a decomposition of the output (like gradient x input), not a sensitivity."""
        return True

    def has_convergence_delta(self) -> bool:
        return True

    # ----------------------------------------------------------------------------------------- helpers
    def _pair(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor]):
        """Resolve ``(x_a, x_b, is_tuple, pair_mode)`` from the Captum-style arguments."""
        is_tuple = isinstance(inputs, tuple)
        items = inputs if is_tuple else (inputs,)
        if is_tuple and len(items) == 2:
            if partner is not None:
                raise ValueError('inputs is a pair (x_a, x_b) and a partner was given; pass either a pair or a '
                                 'partner')
            return items[0], items[1], True, True
        if len(items) != 1:
            raise ValueError(f'inputs must be a tensor, a 1-tuple or a pair (x_a, x_b); got a tuple of {len(items)}')
        x_a = items[0]
        if not isinstance(x_a, torch.Tensor):
            raise TypeError(f'inputs must be tensors, got {type(x_a).__name__}')
        partner = self.partner if partner is None else partner
        if partner is None:
            raise ValueError('no partner: pass partner=... (to attribute or the constructor) or inputs=(x_a, x_b)')
        x_b = expand_partner(partner, x_a.shape[0]).to(device=x_a.device)
        return x_a, x_b, is_tuple, False

    def _run(self, x_a, x_b, additional_forward_args, pooling, marginals: bool) -> BiLRPResult:
        self.model.set_args(_format_args(additional_forward_args), x_a.shape[0])
        try:
            with torch.enable_grad():
                return self.engine.explain(x_a.detach(), x_b.detach(), pooling=pooling, marginals=marginals)
        finally:
            self.model.set_args((), None)

    # ---------------------------------------------------------------------------------------- public
    def explain(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor] = None,
                additional_forward_args: Any = None, pooling: Union[None, int, Pooling, str] = 'default',
                marginals: bool = True) -> BiLRPResult:
        """The full :class:`~zennit_bilrp.core.engine.BiLRPResult` (pairwise, marginals, factors, similarity)."""
        x_a, x_b, _, _ = self._pair(inputs, partner)
        pooling = self.pooling if isinstance(pooling, str) and pooling == 'default' else pooling
        return self._run(x_a, x_b, additional_forward_args, pooling, marginals)

    @log_usage()
    def attribute(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor] = None, target: None = None,
                  additional_forward_args: Any = None, output: str = 'marginal',
                  pooling: Union[None, int, Pooling, str] = 'default', return_convergence_delta: bool = False):
        r"""BiLRP attributions of the similarity of each pair.

        Parameters
        ----------
        inputs : torch.Tensor or tuple of torch.Tensor
            ``x`` (tensor or 1-tuple; needs a partner) or the pair ``(x_a, x_b)``. Batch axis first.
        partner : torch.Tensor, optional
            The inputs ``x'`` compared with ``x`` (partner mode; see the module docstring for its expansion).
        target : None
            Only for Captum signature compatibility: a similarity has no target, anything but ``None`` is an error.
        additional_forward_args : any, optional
            Extra arguments of the forward function, shared by both inputs of each pair. Tensors with one row per
            pair are tiled to the concatenated forward batch.
        output : {'marginal', 'pairwise'}
            Input-shaped marginals (Captum convention) or the pooled pairwise relevance ``(B, P_a, P_b)``.
        pooling : int or Pooling or None, optional
            Pooling of the pairwise output (default: the constructor's).
        return_convergence_delta : bool
            Also return :math:`\delta = y - \sum R` per pair, shape ``(B,)``.

        Returns
        -------
        attributions : torch.Tensor or tuple of torch.Tensor
            Marginal: shaped like ``inputs`` (tensor, 1-tuple, or ``(marginal_a, marginal_b)`` for a pair).
            Pairwise: a tensor ``(B, P_a, P_b)`` (a 1-tuple of it for a 1-tuple input).
        delta : torch.Tensor, optional
            Returned with ``return_convergence_delta=True``.
        """
        if target is not None:
            raise ValueError('BiLRPAttribution explains a similarity, which has no target; leave target=None')
        if output not in OUTPUTS:
            raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')
        x_a, x_b, is_tuple, pair_mode = self._pair(inputs, partner)
        pooling = self.pooling if isinstance(pooling, str) and pooling == 'default' else pooling
        result = self._run(x_a, x_b, additional_forward_args, pooling, marginals=output == 'marginal')
        if output == 'pairwise':  # mirrors a 1-tuple input like Captum methods do (a pair gives one tensor)
            attributions = (result.relevance,) if is_tuple and not pair_mode else result.relevance
        elif pair_mode:
            attributions = (result.marginal_a, result.marginal_b)
        else:
            attributions = (result.marginal_a,) if is_tuple else result.marginal_a
        if return_convergence_delta:
            return attributions, result.delta
        return attributions

    def compute_convergence_delta(self, attributions: TensorOrTuple, inputs: TensorOrTuple,
                                  partner: Optional[torch.Tensor] = None,
                                  additional_forward_args: Any = None) -> torch.Tensor:
        r""":math:`\delta = y - \sum R` per pair for precomputed attributions (marginal or pairwise).

        For a pair's marginal tuple the first element is summed (both marginals have the same total).
        """
        first = attributions[0] if isinstance(attributions, tuple) else attributions
        similarity = self.forward_similarity(inputs, partner, additional_forward_args)
        return similarity - first.reshape(first.shape[0], -1).sum(dim=1).to(similarity)

    def forward_similarity(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor] = None,
                           additional_forward_args: Any = None) -> torch.Tensor:
        """The similarity ``y`` of each pair, ``(B,)`` (no relevance computed)."""
        x_a, x_b, _, _ = self._pair(inputs, partner)
        self.model.set_args(_format_args(additional_forward_args), None)
        try:
            emb_a = self.engine.embed(x_a)
            emb_b = self.engine.embed(x_b, tower='b')
        finally:
            self.model.set_args((), None)
        return self.engine.similarity(emb_a, emb_b)

    def similarity_function(self, partner: Optional[torch.Tensor] = None) -> Callable[..., torch.Tensor]:
        """A Captum ``forward_func`` returning ``y`` per row: ``f(x, *args)`` with a partner, else
        ``f(x_a, x_b, *args)``. For ``captum.metrics.infidelity``."""
        partner = self.partner if partner is None else partner

        def forward(*args):
            if partner is None:
                if len(args) < 2:
                    raise ValueError('without a partner the similarity function takes (x_a, x_b, *args)')
                return self.forward_similarity((args[0], args[1]), None, args[2:] or None)
            return self.forward_similarity(args[0], partner, args[1:] or None)

        return forward

    def __repr__(self) -> str:
        return f'BiLRPAttribution({self.engine!r}, partner={"set" if self.partner is not None else None})'
