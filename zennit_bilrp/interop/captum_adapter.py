r"""BiLRP as a Captum attribution method.

:class:`BiLRPAttribution` subclasses :class:`captum.attr.GradientAttribution` and follows Captum's calling
conventions, computing everything with the BiLRP engine (:class:`zennit_bilrp.core.engine.BiLRP`). For a similarity
:math:`y(x, x') = c\,\phi(x)^\top G\,\phi(x')` it returns either

- the **marginal** of the inputs, shaped exactly like them (the default; what Captum tooling consumes):
  :math:`m_i(x) = \sum_{i'} R_{ii'} = \big[M(x)\,(\phi(x) \odot c\,G\,t(x'))\big]_i`, with :math:`t_n(x')` the total
  relevance of unit :math:`n` of :math:`x'`. It is computed exactly with one LRP pass of :math:`y` with :math:`x'`
  held fixed, after explaining every unit at the coarsest pooling (one patch per input, so no pairwise matrix
  beyond ``1 x 1`` is formed, whatever the input size);
- the **pairwise** relevance :math:`R` pooled to patches, ``(B, P_a, P_b)`` (``output='pairwise'``).

Both sum to the same total, and ``return_convergence_delta=True`` returns :math:`\delta = y - \sum R` per pair (the
sign of Captum's ``LRP``: LRP has no baseline and decomposes :math:`y` itself).

How the pair is passed
----------------------
``attribute(inputs, partner=None, ..., pair=False)``:

- *partner mode* (``partner`` given, ``inputs`` a tensor or a 1-tuple): explain ``y(inputs[i], partner[i])``;
  only ``inputs`` are perturbed by Captum tooling (NoiseTunnel, infidelity, sensitivity_max), the partner stays
  fixed. A partner with fewer rows ``M`` than the inputs ``N = k M`` is expanded with
  ``partner.repeat_interleave(k)``, the expansion Captum applies to inputs; so a partner of the original batch
  size keeps pairing correctly when Captum tooling enlarges the batch. The partner may also be given once, to the
  constructor.
- *pair mode* (``inputs = (x_a, x_b)`` with ``pair=True``): both inputs are explained (and perturbed by the
  tooling); the marginal output is the tuple ``(marginal_a, marginal_b)``.

A tuple of several tensors without ``pair=True`` keeps Captum's meaning, several inputs of one forward call, which
BiLRP does not explain (it explains one input tensor per side): it is refused. Inputs that the forward function
needs but that are not explained (masks, lengths, ...) go to ``additional_forward_args``; they are passed as in
Captum, ``forward_func(x, *additional_forward_args)``, to a module as well as to a function, and are the same for
both inputs of a pair.

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
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import nn

from ..core.engine import BiLRP
from ..core.pooling import SAME, Pooling
from ..core.results import BiLRPResult

__all__ = ['BiLRPAttribution', 'ForwardModule', 'expand_partner', 'WHOLE_INPUT']

TensorOrTuple = Union[torch.Tensor, tuple[torch.Tensor, ...]]
OUTPUTS = ('marginal', 'pairwise')

#: one patch per input: the pooling under which the marginal output is computed (a ``1 x 1`` pairwise matrix)
WHOLE_INPUT = Pooling(grid=1)


class ForwardModule(nn.Module):
    """A forward function as an ``nn.Module`` whose sub-modules Zennit can hook.

    ``forward(x, *args)`` calls ``func(x, *args)``. The modules ``func`` calls are registered as children, each
    exactly once: duplicates and modules contained in another listed module are dropped, so that composites and
    canonizers reach every layer once (a canonizer applied twice would, e.g., merge a BatchNorm twice).

    Parameters
    ----------
    func : callable
        ``func(x, *args) -> embeddings`` (or feature maps pooled by the head); not an ``nn.Module`` (a module is
        explained as it is, without a wrapper).
    modules : sequence of nn.Module
        The modules ``func`` calls.
    """

    def __init__(self, func: Callable, modules: Sequence[nn.Module]):
        super().__init__()
        if isinstance(func, nn.Module):
            raise TypeError(f'ForwardModule wraps forward functions; the module {type(func).__name__} is explained '
                            'as it is (BiLRPAttribution(module) needs no wrapper)')
        if not callable(func):
            raise TypeError(f'func must be callable, got {type(func).__name__}')
        modules = list(modules)
        if not modules:
            raise ValueError('ForwardModule: no modules given; a forward function must call at least one nn.Module '
                             'whose layers LRP rules can be attached to')
        for module in modules:
            if not isinstance(module, nn.Module):
                raise TypeError(f'modules must be nn.Module objects, got {type(module).__name__}')
        self.func = func
        self.hooked = nn.ModuleList(_outermost(modules))

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return self.func(x, *args)


def _outermost(modules: Sequence[nn.Module]) -> list:
    """``modules`` without duplicates and without modules that lie inside another of them (order kept)."""
    unique = []
    for module in modules:
        if all(module is not other for other in unique):
            unique.append(module)
    inner = set()
    for module in unique:
        inner.update(id(sub) for sub in module.modules() if sub is not module)
    return [module for module in unique if id(module) not in inner]


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
    """Captum's convention: ``None`` is no argument, a tuple holds several, anything else is one argument."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _tile_args(args: tuple, batch_size: Optional[int], rows: int) -> tuple:
    """Tile tensor arguments with one row per pair (``batch_size`` rows) to a forwarded batch of ``rows`` rows.

    The engine forwards both inputs of the pairs as one batch ``cat([x_a, x_b])`` (and the ``'replicate'`` method
    repeats it), so ``arg.repeat(rows // batch_size)`` gives both inputs of pair ``i`` the argument's row ``i``.
    """
    if not batch_size or rows == batch_size:
        return args
    tiled = []
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == batch_size:
            if rows % batch_size:
                raise ValueError(f'additional_forward_args: cannot tile an argument with {batch_size} rows (one per '
                                 f'pair) to a forwarded batch of {rows}')
            arg = arg.repeat(rows // batch_size, *([1] * (arg.dim() - 1)))
        tiled.append(arg)
    return tuple(tiled)


def _check_accepts(forward: Callable, args: tuple, owner: str) -> None:
    """Refuse ``additional_forward_args`` that ``forward(x, *args)`` cannot take, naming the argument."""
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(None, *args)
    except TypeError as error:
        raise TypeError(
            f'additional_forward_args: {len(args)} argument(s) given, but the forward of {owner} has the signature '
            f'{signature} and cannot be called as forward(x, *additional_forward_args) ({error}); pass only the '
            'arguments it takes after the input'
        ) from None


@contextmanager
def _forwarding_args(models: Sequence[nn.Module], args: tuple, batch_size: Optional[int]) -> Iterator[None]:
    """Call each model as ``model(x, *args)`` while active: a forward pre-hook appends the (tiled) arguments.

    The hook lives on the models themselves (no wrapper), so composites, canonizers and layer names are those of the
    model, and it is removed on exit.
    """
    if not args:
        yield
        return
    for model in models:
        if isinstance(model, ForwardModule):
            _check_accepts(model.func, args, getattr(model.func, '__qualname__', type(model.func).__name__))
        else:
            _check_accepts(model.forward, args, type(model).__name__)

    def append(module: nn.Module, inputs: tuple) -> tuple:
        return (*inputs, *_tile_args(args, batch_size, inputs[0].shape[0]))

    handles = []
    try:
        for model in models:
            handles.append(model.register_forward_pre_hook(append))
        yield
    finally:
        for handle in handles:
            handle.remove()


class BiLRPAttribution(GradientAttribution):
    r"""BiLRP explanations of a similarity model with Captum's ``attribute`` conventions.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The embedding model :math:`\phi` (explained as it is: composite and canonizers are applied to it once, its
        layer names are the ones name-based composites see), or a function ``f(x, *additional_forward_args)``
        returning embeddings. A function is wrapped in a :class:`ForwardModule` so that the composite can hook the
        modules it calls; they are found automatically (bound method owner, closure variables, referenced globals)
        or given by ``modules``. Operations of a function outside modules are backpropagated as plain gradients, so
        keep them relevance-preserving (indexing, reshaping, masking with 0/1 values).
    composite : zennit.core.Composite, optional
        LRP rules (default :func:`zennit_bilrp.lrp.composites.bilrp_composite`).
    canonizers : list, optional
        Extra Zennit canonizers (e.g. :func:`zennit_bilrp.lrp.canonizers.canonizers_for`).
    similarity : {'dot', 'cosine'} or Similarity or torch.Tensor
        The similarity explained.
    head : str or Head
        How the model output becomes the embedding (see :mod:`zennit_bilrp.core.heads`).
    partner : torch.Tensor, optional
        Default partner inputs (used when ``attribute`` gets none and is not in pair mode).
    pooling : int or Pooling, optional
        Default pooling of the pairwise output (``None``: per position, channels summed).
    modules : sequence of nn.Module, optional
        The modules a forward *function* calls (overrides the automatic search; not for a module
        ``forward_func``).
    **engine_kwargs
        Passed to :class:`~zennit_bilrp.core.engine.BiLRP` (``method``, ``chunk_size``, ``memory_budget``, ``strict``,
        ...).

    Attributes
    ----------
    model : nn.Module
        What the engine explains: ``forward_func`` itself, or the :class:`ForwardModule` wrapping a function.
    engine : zennit_bilrp.core.engine.BiLRP
        The engine that computes every result.

    Examples
    --------
    >>> from captum.attr import NoiseTunnel
    >>> explainer = BiLRPAttribution(model, composite=EpsilonPlus(), similarity='cosine')
    >>> heat = explainer.attribute(x, partner=x_ref)                                      # shaped like x
    >>> pairs = explainer.attribute((x, x_ref), pair=True, output='pairwise', pooling=8)  # (B, P, P)
    >>> smooth = NoiseTunnel(explainer).attribute(x, partner=x_ref, nt_type='smoothgrad', nt_samples=8)
    """

    def __init__(self, forward_func: Union[nn.Module, Callable], composite=None, canonizers=None,
                 similarity='dot', head='none', partner: Optional[torch.Tensor] = None,
                 pooling: Union[None, int, Pooling] = None, modules: Optional[Sequence[nn.Module]] = None,
                 **engine_kwargs):
        if not callable(forward_func):
            raise TypeError(f'forward_func must be an nn.Module or a callable, got {type(forward_func).__name__}')
        super().__init__(forward_func)
        if isinstance(forward_func, nn.Module):
            if modules is not None:
                raise ValueError('modules= lists the modules a forward *function* calls; an nn.Module forward_func '
                                 'is explained as it is, with all of its sub-modules')
            self.model = forward_func
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
        """True: :math:`\\delta = y - \\sum R` is returned with ``return_convergence_delta=True``."""
        return True

    def _pair(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor], pair: bool):
        """Resolve ``(x_a, x_b, is_tuple)`` from the Captum-style arguments."""
        if pair:
            if partner is not None:
                raise ValueError('pair=True explains inputs=(x_a, x_b) with each other; do not also pass a partner')
            if not (isinstance(inputs, tuple) and len(inputs) == 2):
                got = f'a tuple of {len(inputs)}' if isinstance(inputs, tuple) else type(inputs).__name__
                raise ValueError(f'pair=True needs inputs=(x_a, x_b), got {got}')
            for name, item in zip(('x_a', 'x_b'), inputs):
                if not isinstance(item, torch.Tensor):
                    raise TypeError(f'inputs: {name} must be a torch.Tensor, got {type(item).__name__}')
            return inputs[0], inputs[1], True
        is_tuple = isinstance(inputs, tuple)
        items = inputs if is_tuple else (inputs,)
        if len(items) != 1:
            raise ValueError(
                f'inputs is a tuple of {len(items)} tensors, which Captum reads as {len(items)} inputs of one forward '
                'call; BiLRP explains one input tensor per side. Pass what the forward function needs but should not '
                'be explained (masks, ...) as additional_forward_args=..., or explain a pair with '
                'inputs=(x_a, x_b), pair=True'
            )
        x_a = items[0]
        if not isinstance(x_a, torch.Tensor):
            raise TypeError(f'inputs must be tensors, got {type(x_a).__name__}')
        partner = self.partner if partner is None else partner
        if partner is None:
            raise ValueError('no partner: pass partner=... (to attribute or the constructor) or '
                             'inputs=(x_a, x_b), pair=True')
        x_b = expand_partner(partner, x_a.shape[0]).to(device=x_a.device)
        return x_a, x_b, is_tuple

    def _towers(self) -> list:
        return [model for model in (self.engine.model, self.engine.model_b) if model is not None]

    def _run(self, x_a: torch.Tensor, x_b: torch.Tensor, additional_forward_args: Any,
             pooling: Union[None, int, Pooling], marginals: bool) -> BiLRPResult:
        args = _format_args(additional_forward_args)
        with _forwarding_args(self._towers(), args, x_a.shape[0]), torch.enable_grad():
            return self.engine.explain(x_a.detach(), x_b.detach(), pooling=pooling, marginals=marginals)

    def _default_pooling(self, pooling: Union[None, int, Pooling, str]) -> Union[None, int, Pooling]:
        return Pooling.ensure(pooling, same=self.pooling)

    def explain(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor] = None,
                additional_forward_args: Any = None, pooling: Union[None, int, Pooling, str] = SAME,
                marginals: bool = True, pair: bool = False) -> BiLRPResult:
        """The full :class:`~zennit_bilrp.core.results.BiLRPResult` (pairwise, marginals, factors, similarity).

        Takes ``inputs``, ``partner``, ``additional_forward_args`` and ``pair`` like :meth:`attribute`; the
        pairwise relevance is pooled with ``pooling`` (default: the constructor's).
        """
        x_a, x_b, _ = self._pair(inputs, partner, pair)
        return self._run(x_a, x_b, additional_forward_args, self._default_pooling(pooling), marginals)

    @log_usage()
    def attribute(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor] = None, target: None = None,
                  additional_forward_args: Any = None, output: str = 'marginal',
                  pooling: Union[None, int, Pooling, str] = SAME, return_convergence_delta: bool = False,
                  pair: bool = False):
        r"""BiLRP attributions of the similarity of each pair.

        Parameters
        ----------
        inputs : torch.Tensor or tuple of torch.Tensor
            ``x`` (tensor or 1-tuple; needs a partner), or the pair ``(x_a, x_b)`` with ``pair=True``. Batch axis
            first.
        partner : torch.Tensor, optional
            The inputs ``x'`` compared with ``x`` (partner mode; see the module docstring for its expansion).
        target : None
            Only for Captum signature compatibility: a similarity has no target, anything but ``None`` is an error.
        additional_forward_args : any, optional
            Extra arguments of the forward, ``forward_func(x, *additional_forward_args)`` (module or function),
            shared by both inputs of each pair. Tensors with one row per pair are tiled to the concatenated forward
            batch.
        output : {'marginal', 'pairwise'}
            Input-shaped marginals (Captum convention) or the pooled pairwise relevance ``(B, P_a, P_b)``. The
            marginal forms no pairwise matrix (the units are explained at one patch per input), so it works at any
            input size.
        pooling : int or Pooling or None, optional
            Pooling of the pairwise output (default: the constructor's); not used by the marginal.
        return_convergence_delta : bool
            Also return :math:`\delta = y - \sum R` per pair, shape ``(B,)``.
        pair : bool
            Pair mode: ``inputs = (x_a, x_b)`` are explained with each other (both perturbed by Captum tooling).
            Without it a tuple of several tensors is refused (Captum reads it as several inputs of one forward).

        Returns
        -------
        attributions : torch.Tensor or tuple of torch.Tensor
            Marginal: shaped like ``inputs`` (tensor, 1-tuple, or ``(marginal_a, marginal_b)`` in pair mode).
            Pairwise: a tensor ``(B, P_a, P_b)`` (a 1-tuple of it for a 1-tuple input).
        delta : torch.Tensor, optional
            Returned with ``return_convergence_delta=True``.
        """
        if target is not None:
            raise ValueError('BiLRPAttribution explains a similarity, which has no target; leave target=None')
        if output not in OUTPUTS:
            raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')
        x_a, x_b, is_tuple = self._pair(inputs, partner, pair)
        if output == 'pairwise':
            result = self._run(x_a, x_b, additional_forward_args, self._default_pooling(pooling), marginals=False)
            # mirrors a 1-tuple input like Captum methods do (a pair gives one tensor)
            attributions = (result.relevance,) if is_tuple and not pair else result.relevance
        else:
            result = self._run(x_a, x_b, additional_forward_args, WHOLE_INPUT, marginals=True)
            if pair:
                attributions = (result.marginal_a, result.marginal_b)
            else:
                attributions = (result.marginal_a,) if is_tuple else result.marginal_a
        if return_convergence_delta:
            return attributions, result.delta
        return attributions

    def compute_convergence_delta(self, attributions: TensorOrTuple, start_point: None = None,
                                  end_point: Optional[TensorOrTuple] = None, target: None = None,
                                  additional_forward_args: Any = None, partner: Optional[torch.Tensor] = None,
                                  pair: bool = False) -> torch.Tensor:
        r""":math:`\delta = y - \sum R` per pair for precomputed attributions (marginal or pairwise).

        Captum's signature (``GradientAttribution.compute_convergence_delta``): the explained inputs are
        ``end_point``. LRP has no baseline, it decomposes :math:`y(x, x')` itself, so ``start_point`` must be
        ``None``; the sign is that of Captum's ``LRP`` (output minus attribution sum) and of ``attribute``'s delta.

        Parameters
        ----------
        attributions : torch.Tensor or tuple of torch.Tensor
            Output of :meth:`attribute` (in pair mode the first marginal is summed: both have the same total).
        start_point : None
            Only for Captum signature compatibility; anything but ``None`` is an error.
        end_point : torch.Tensor or tuple of torch.Tensor
            The explained inputs, as passed to :meth:`attribute`.
        target : None
            Only for Captum signature compatibility; anything but ``None`` is an error.
        additional_forward_args : any, optional
            As in :meth:`attribute`.
        partner : torch.Tensor, optional
            As in :meth:`attribute` (default: the constructor's).
        pair : bool
            As in :meth:`attribute`.

        Returns
        -------
        torch.Tensor
            :math:`\delta` per pair, ``(B,)``.
        """
        if start_point is not None:
            raise ValueError(
                'start_point must be None: LRP has no baseline, it decomposes the similarity of end_point itself; '
                'call compute_convergence_delta(attributions, None, x, partner=x_ref)'
            )
        if end_point is None:
            raise ValueError('end_point is required: the inputs that were explained (as passed to attribute)')
        if target is not None:
            raise ValueError('BiLRPAttribution explains a similarity, which has no target; leave target=None')
        first = attributions[0] if isinstance(attributions, tuple) else attributions
        similarity = self.forward_similarity(end_point, partner, additional_forward_args, pair=pair)
        if first.shape[0] != similarity.shape[0]:
            raise ValueError(f'attributions have {first.shape[0]} rows but end_point gives {similarity.shape[0]} '
                             'pairs')
        return similarity - first.reshape(first.shape[0], -1).sum(dim=1).to(similarity)

    def forward_similarity(self, inputs: TensorOrTuple, partner: Optional[torch.Tensor] = None,
                           additional_forward_args: Any = None, pair: bool = False) -> torch.Tensor:
        """The similarity ``y`` of each pair, ``(B,)`` (no relevance computed); arguments as in :meth:`attribute`."""
        x_a, x_b, _ = self._pair(inputs, partner, pair)
        with _forwarding_args(self._towers(), _format_args(additional_forward_args), None):
            emb_a = self.engine.embed(x_a)
            emb_b = self.engine.embed(x_b, tower='b')
        return self.engine.similarity(emb_a, emb_b)

    def similarity_function(self, partner: Optional[torch.Tensor] = None) -> Callable[..., torch.Tensor]:
        """A Captum ``forward_func`` returning ``y`` per row: ``f(x, *args)`` with a partner, else
        ``f(x_a, x_b, *args)``. For ``captum.metrics.infidelity``."""
        partner = self.partner if partner is None else partner

        def forward(*args):
            if partner is None:
                if len(args) < 2:
                    raise ValueError('without a partner the similarity function takes (x_a, x_b, *args)')
                return self.forward_similarity((args[0], args[1]), None, args[2:] or None, pair=True)
            return self.forward_similarity(args[0], partner, args[1:] or None)

        return forward

    def __repr__(self) -> str:
        return f'BiLRPAttribution({self.engine!r}, partner={"set" if self.partner is not None else None})'
