r"""Strict mode: refuse every model whose LRP relevance the registered rules would not compute correctly.

With Zennit, a rule is a pair of hooks on one module; between hooked modules the relevance is the plain gradient.
That is LRP only where the plain gradient is a valid relevance propagation: structural operations (views,
indexing, concatenation, padding), piecewise identity-or-constant elementwise operations (ReLU, clamping,
masking), max and average pooling, and operations with a single input-dependent operand (a constant added,
which absorbs relevance as a bias does, or multiplied, which scales the relevance; BatchNorm in eval mode).
Everywhere else the gradient is not the relevance: a residual ``x + y`` written inline gives both summands the
full relevance (relevance doubles per block), a product of two input-dependent tensors (a gate, attention) or a
softmax/LayerNorm has no relevance-conserving gradient, and a module whose rule stores its input keeps only its
last call's input.

Two checks, both raising :class:`TypeError` naming the module (its qualified name and type):

- :func:`check_registered`, right after the composite and canonizers are registered: leaf layers with
  parameters that got no rule, layer types that gradient passing cannot explain (attention, normalization,
  softmax, :class:`zennit.layer.Sum` without a rule).
- :class:`ForwardAudit`, around one forward pass: walks the autograd graph of the output, skips the inside of
  every module with a rule (from its output node straight to its input nodes) and refuses every remaining
  operation that combines input-dependent tensors or is not a valid gradient propagation; it also refuses
  modules with a rule that are called more than once (if the rule stores its input), that receive several
  input tensors or that do not return a single tensor.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Iterator, Optional

import torch
from zennit.core import BasicHook, Hook
from zennit.layer import Sum

from ..torch_private import custom_function, forward_pre_hooks, sequence_number
from .checks import TRAIN_SENSITIVE, iter_tensors

__all__ = ['check_registered', 'ForwardAudit']

# torch >= 2.1 calls a forward hook also when the forward raises; older versions reset the audit in __exit__
_ALWAYS_CALL = ({'always_call': True}
                if 'always_call' in inspect.signature(torch.nn.Module.register_forward_hook).parameters else {})

#: normalization layers: the statistics depend on the input, so their gradient is not LRP without a dedicated rule
_NORMALIZATIONS = tuple(cls for cls in (
    torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.LocalResponseNorm, torch.nn.CrossMapLRN2d,
    torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.LazyInstanceNorm1d,
    torch.nn.LazyInstanceNorm2d, torch.nn.LazyInstanceNorm3d, getattr(torch.nn, 'RMSNorm', None),
) if cls is not None)
#: softmax layers: no LRP rule in Zennit, and their gradient does not conserve relevance
_SOFTMAXES = (torch.nn.Softmax, torch.nn.Softmin, torch.nn.LogSoftmax, torch.nn.Softmax2d)

#: graph operations that are valid relevance propagations with any number of input-dependent operands
_JOINING = frozenset({'CatBackward', 'StackBackward', 'BackwardHookFunctionBackward'})
#: graph operations that are valid relevance propagations when at most one operand depends on the input
_UNARY_OK = frozenset({
    'ViewBackward', 'UnsafeViewBackward', 'ReshapeAliasBackward', 'AliasBackward', 'AsStridedBackward',
    'PermuteBackward', 'TransposeBackward', 'TBackward', 'ExpandBackward', 'SqueezeBackward', 'UnsqueezeBackward',
    'SelectBackward', 'SliceBackward', 'IndexBackward', 'IndexSelectBackward', 'GatherBackward', 'NarrowBackward',
    'SplitBackward', 'SplitWithSizesBackward', 'UnbindBackward', 'CloneBackward', 'ToCopyBackward', 'CopyBackwards',
    'FlipBackward', 'RollBackward', 'RepeatBackward', 'ConstantPadNdBackward', 'PixelShuffleBackward',
    'PixelUnshuffleBackward', 'ChannelShuffleBackward', 'UnfoldBackward', 'Im2ColBackward', 'DiagonalBackward',
    'ReluBackward', 'ThresholdBackward', 'HardtanhBackward', 'ClampBackward', 'ClampMinBackward',
    'ClampMaxBackward', 'WhereBackward', 'MaskedFillBackward', 'MaxBackward', 'AmaxBackward', 'MeanBackward',
    'AddBackward', 'SubBackward', 'RsubBackward', 'MulBackward', 'DivBackward', 'NegBackward',
    'NativeBatchNormBackward', 'CudnnBatchNormBackward', 'MiopenBatchNormBackward',
})
#: pooling, padding and nearest-neighbor upsampling nodes (names carry the dimension)
_UNARY_OK_PATTERN = re.compile(
    r'(Adaptive)?(Max|Avg)Pool\dD(WithIndices)?Backward|(Reflection|Replication)Pad\dDBackward'
    r'|_?UpsampleNearest(Exact)?\dDBackward'
)
_MATRIX_PRODUCTS = frozenset({
    'MmBackward', 'BmmBackward', 'MvBackward', 'DotBackward', 'VdotBackward', 'AddmmBackward', 'AddbmmBackward',
    'BaddbmmBackward', 'AddmvBackward', 'MatmulBackward', 'LinearBackward', 'ConvolutionBackward',
})
_NORMALIZATION_OPS = frozenset({
    'NativeLayerNormBackward', 'NativeGroupNormBackward', 'RmsNormBackward', 'FusedRmsNormBackward',
    'LinalgVectorNormBackward', 'NormBackward',
})
_SMOOTH_ACTIVATIONS = frozenset({
    'GeluBackward', 'SiluBackward', 'SigmoidBackward', 'TanhBackward', 'EluBackward', 'SoftplusBackward',
    'HardswishBackward', 'HardsigmoidBackward', 'MishBackward', 'LeakyReluBackward', 'PreluKernelBackward',
    'RreluWithNoiseBackward', 'LogSigmoidBackward', 'SoftshrinkBackward', 'HardshrinkBackward',
})
#: packages whose custom autograd functions implement rules or relevance masks (trusted in the graph)
_TRUSTED_FUNCTIONS = ('zennit.', 'zennit_bilrp.')
_MAX_LISTED = 3


def _where(name: str, module: torch.nn.Module) -> str:
    """``'layer1.0' (BasicBlock)``, or the model itself when ``name`` is empty."""
    return f"'{name}' ({type(module).__name__})" if name else f'the model itself ({type(module).__name__})'


def _report(problems: list) -> str:
    """The first problem in full, then how many more (the next few named)."""
    message = problems[0]
    rest = problems[1:]
    if rest:
        named = '; '.join(problem.split(':', 1)[0] for problem in rest[:_MAX_LISTED])
        more = ', ...' if len(rest) > _MAX_LISTED else ''
        message += f' [{len(rest)} more problem(s): {named}{more}]'
    return message


def _zennit_rule(module: torch.nn.Module) -> Optional[Hook]:
    """The Zennit rule registered on ``module`` (the owner of one of its forward pre-hooks), if any."""
    for hook in forward_pre_hooks(module):
        owner = getattr(hook, '__self__', None)
        if isinstance(owner, Hook):
            return owner
    return None


def _stores_input(rule: Hook) -> bool:
    """Whether ``rule`` keeps state from the forward pass (its own ``forward`` hook, as every
    :class:`~zennit.core.BasicHook` has): such a rule is wrong for all but the last call of its module."""
    return isinstance(rule, BasicHook) or type(rule).forward is not Hook.forward


def _static_problem(module: torch.nn.Module, has_rule: bool) -> Optional[str]:
    """Why ``module`` cannot be explained as registered, or None."""
    if isinstance(module, torch.nn.MultiheadAttention):
        return ('attention has no LRP rule: Zennit treats nn.MultiheadAttention as an activation and gives it '
                'Pass, which fails in the backward pass (the module takes three inputs and returns a tuple), and '
                'the plain gradient through softmax(QK^T)V is not relevance. Strict mode cannot explain attention '
                'layers')
    if has_rule:
        return None
    if isinstance(module, _NORMALIZATIONS):
        return ('a normalization layer without an LRP rule: its statistics depend on the input, so its plain '
                'gradient is not relevance. Map it to a rule in the composite (e.g. one that treats the '
                'statistics as constants)')
    if isinstance(module, _SOFTMAXES):
        return ('softmax without an LRP rule: its plain gradient does not conserve relevance. Explain the '
                'logits (remove the softmax) or map it to a rule in the composite')
    if isinstance(module, Sum):
        return ('a residual sum (zennit.layer.Sum) without an LRP rule: its plain gradient gives every summand the '
                'full relevance (relevance doubles). Map Sum to a rule, e.g. zennit.rules.Norm as the stock '
                'composites do')
    has_params = next(module.parameters(recurse=False), None) is not None
    is_leaf = next(iter(module.children()), None) is None
    if has_params and is_leaf and not isinstance(module, TRAIN_SENSITIVE):
        return ('the composite assigns it no LRP rule, so its relevance would be a plain gradient. Map it to a '
                'rule in the composite (or pass strict=False to accept this)')
    return None


def check_registered(model: torch.nn.Module, before: dict) -> None:
    """Strict mode, static part: refuse layers the registered composite cannot explain.

    Run right after the canonizers and the composite are registered. A module has a rule when it has more
    forward pre-hooks than before registration (Zennit registers every rule as one). Refused:

    - leaf layers with parameters and no rule (except BatchNorm/Dropout, which canonizers merge or which are the
      identity in eval mode): their relevance would be a plain gradient;
    - :class:`torch.nn.MultiheadAttention`, with or without a rule: Zennit's ``Pass`` fails on its tuple output
      and no gradient through attention is relevance;
    - normalization layers (LayerNorm, GroupNorm, InstanceNorm, LocalResponseNorm, RMSNorm), softmax layers and
      :class:`zennit.layer.Sum` without a rule: their plain gradient does not propagate relevance (statistics
      depend on the input; a sum gives each summand the full relevance).

    Parameters
    ----------
    model : torch.nn.Module
        The model after registration.
    before : dict
        ``id(module) -> number of forward pre-hooks`` recorded before the canonizers and the composite were
        registered (modules added by canonizers count from 0).

    Raises
    ------
    TypeError
        Naming the first refused layer (qualified name and type) and what to do, and how many more there are.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    if not isinstance(before, dict):
        raise TypeError(f'before must be a dict id(module) -> number of forward pre-hooks, got '
                        f'{type(before).__name__}')
    problems = []
    for name, module in model.named_modules():
        has_rule = len(forward_pre_hooks(module)) > before.get(id(module), 0)
        reason = _static_problem(module, has_rule)
        if reason is not None:
            problems.append(f'unsupported layer {_where(name, module)}: {reason}')
    if problems:
        raise TypeError(_report(problems))


def _arguments(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    """The tensors among a call's arguments (fast path for the usual call with tensor arguments only)."""
    if not kwargs and all(type(arg) is torch.Tensor for arg in args):
        return iter(args)
    return iter_tensors((args, kwargs))


class _Top:
    """Marks an input of a module that is a leaf input of the whole forward (no graph node of its own)."""


_TOP = _Top()


class _Call:
    """One call of one module: its input and output graph nodes."""

    __slots__ = ('name', 'module', 'rule', 'inputs', 'grad_inputs', 'outputs', 'single_output', 'span')

    def __init__(self, name: str, module: torch.nn.Module, rule: Optional[Hook], inputs: list, grad_inputs: int):
        self.name = name
        self.module = module
        self.rule = rule
        self.inputs = inputs
        self.grad_inputs = grad_inputs
        self.outputs: list = []
        self.single_output = False
        self.span: Optional[set] = None


def _base_name(node) -> str:
    return re.sub(r'\d+$', '', type(node).__name__)


def _judge(node, branches: int) -> Optional[str]:
    """Why the plain gradient through graph node ``node`` with ``branches`` input-dependent operands is not a
    valid relevance propagation, or None where it is."""
    name = _base_name(node)
    function = custom_function(node)
    if function is not None and name != 'BackwardHookFunctionBackward':
        if function.__module__.startswith(_TRUSTED_FUNCTIONS):
            return None
        return (f'custom autograd function {function.__qualname__} outside a module with an LRP rule: its backward '
                'is not known to propagate relevance. Put it into a module that the composite gives a rule')
    if name in _JOINING:
        return None
    if branches <= 1:
        if name in _UNARY_OK or _UNARY_OK_PATTERN.fullmatch(name):
            return None
        if name in _SMOOTH_ACTIVATIONS:
            return ('an activation applied as a function: its gradient is not the pass-through rule of LRP. Use '
                    'the nn.Module version (e.g. nn.GELU, nn.SiLU), which Zennit maps to Pass')
        if name == 'SumBackward':
            return ('a sum over an axis written inline (e.g. x.sum(dim)): its plain gradient gives every summand '
                    'the full relevance. Use a zennit.layer.Sum module with the Norm rule, or head="sum"')
    if name in ('AddBackward', 'SubBackward', 'RsubBackward'):
        return ('adds two input-dependent tensors outside a module with an LRP rule (e.g. a residual written '
                '`x + identity` or `out += identity`): the plain gradient gives both summands the full relevance '
                '(relevance doubles). Stack the summands and add them with a zennit.layer.Sum module (rule Norm), '
                'e.g. with a canonizer (zennit_bilrp.canonizers_for(model))')
    if name in ('MulBackward', 'DivBackward'):
        return ('multiplies or divides two input-dependent tensors outside a module with an LRP rule (e.g. a gate '
                '`sigmoid(s) * x` or an inline normalization): the plain gradient is not relevance. Move it into a '
                'module with a rule, or treat one factor as a constant (detach it)')
    if name in _MATRIX_PRODUCTS or name.startswith('ScaledDotProduct') or 'Attention' in name:
        return ('a matrix product or linear map computed outside a module with an LRP rule (e.g. F.linear, '
                'x @ W, attention written inline): its plain gradient is not relevance. Use nn.Linear/nn.Conv '
                'modules, which the composite gives rules')
    if name in ('SoftmaxBackward', 'LogSoftmaxBackward'):
        return 'a softmax outside a module with an LRP rule: its plain gradient does not conserve relevance'
    if name in _NORMALIZATION_OPS:
        return ('a normalization (layer/group norm, vector norm) outside a module with an LRP rule: its statistics '
                'depend on the input, so the plain gradient is not relevance. Use a module with a rule (e.g. '
                'zennit_bilrp.Normalize for L2 normalization)')
    operands = f' with {branches} input-dependent operands' if branches > 1 else ''
    return (f'operation {type(node).__name__}{operands} outside a module with an LRP rule: its plain gradient is '
            'not known to propagate relevance. Move it into a module that the composite gives a rule')


class ForwardAudit:
    """Strict mode, forward part: record one forward pass of ``model`` and refuse what its rules cannot explain.

    While entered, every module of ``model`` carries a forward pre-hook and a forward hook that record, for each
    call, the autograd nodes of its inputs (as the module receives them, after Zennit's pre-hooks) and of its
    outputs (as its forward returns them, before other forward hooks).
    :meth:`verify` then walks the autograd graph of the output from the output towards the input. The inside of
    every module with a rule is skipped (its rule replaces the gradient there: the walk jumps from the module's
    output node to its input nodes); every other node is plain gradient and must be a valid relevance
    propagation: structural operations, ReLU-like (identity-or-constant) elementwise operations, max/average
    pooling, and operations with at most one input-dependent operand (a constant added or multiplied,
    BatchNorm in eval mode). A node depends on the input when the forward's input tensors that require grad
    are among its ancestors.

    Refused (:class:`TypeError` naming the innermost module whose forward ran the operation):

    - two input-dependent tensors added, subtracted, multiplied or divided (residuals written ``x + y``,
      gates), matrix products, attention, softmax, layer/group norms and inline sums outside modules with rules;
    - activations applied as functions whose gradient is not the pass-through (GELU, SiLU, leaky ReLU, ...);
    - custom autograd functions other than Zennit's and zennit-bilrp's;
    - a module with a rule that stores its input (every LRP rule but ``Pass``-like ones) called more than once:
      Zennit's hooks keep only the last call's input;
    - a module with a rule that receives more than one input tensor requiring grad or does not return a single
      tensor (the rule's backward hook handles one tensor in and one out).

    Every hook is removed on exit, also on errors; the model is not otherwise touched. The records describe the
    latest forward of ``model`` in the block (each forward starts afresh) and are dropped by :meth:`verify`.

    Parameters
    ----------
    model : torch.nn.Module
        The model, with its composite registered.

    Examples
    --------
    >>> from zennit.composites import EpsilonPlus
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> composite = EpsilonPlus()
    >>> composite.register(model)
    >>> x = torch.rand(2, 4, requires_grad=True)
    >>> with ForwardAudit(model) as audit:
    ...     output = model(x)
    >>> audit.verify(output)
    >>> composite.remove()
    """

    def __init__(self, model: torch.nn.Module):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        self.model = model
        self._handles: list = []
        self._entered = False
        self._depth = 0
        self._reset()

    def _reset(self) -> None:
        self._forwards = 0
        self._tops: list = []
        self._pending: dict = {}
        self._calls: list = []
        self._counts: dict = {}

    def __enter__(self) -> ForwardAudit:
        if self._entered:
            raise RuntimeError('this ForwardAudit is already entered; use one audit per forward pass')
        self._reset()
        self._depth = 0
        self._entered = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._start, with_kwargs=True, prepend=True))
            self._handles.append(self.model.register_forward_hook(self._finish, **_ALWAYS_CALL))
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
                # first among the forward hooks: the output as the forward returned it, and hooks that must come
                # last on a layer (e.g. NeuronMask) stay last
                self._handles.append(module.register_forward_hook(self._post_hook, prepend=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        self._remove()
        if exc_type is not None:
            self._reset()
            self._depth = 0
        return False

    def _remove(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles = []
        self._entered = False

    def _start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """First pre-hook of the top-level model: a new forward pass begins (unless the model calls itself)."""
        self._depth += 1
        if self._depth > 1:
            return None
        self._reset()
        self._forwards = 1
        self._tops = [t for t in iter_tensors((args, kwargs)) if t.requires_grad]
        return None

    def _finish(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        """Last forward hook of the top-level model, also called when its forward raises."""
        self._depth -= 1
        return None

    def _pre_hook(self, name: str):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            rule = _zennit_rule(module)
            inputs, grad_inputs = [], 0
            for tensor in _arguments(args, kwargs):
                if not tensor.requires_grad:
                    continue
                grad_inputs += 1
                if tensor.grad_fn is not None:
                    inputs.append(tensor.grad_fn)
                elif any(tensor is top for top in self._tops):
                    inputs.append(_TOP)
            if rule is not None:
                self._counts[id(module)] = self._counts.get(id(module), 0) + 1
            self._pending.setdefault(id(module), []).append(_Call(name, module, rule, inputs, grad_inputs))
            return None
        return hook

    def _post_hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        pending = self._pending.get(id(module))
        if not pending:
            return None
        call = pending.pop()
        call.single_output = isinstance(output, torch.Tensor)
        if call.single_output:
            call.outputs = [output.grad_fn] if output.grad_fn is not None else []
        else:
            call.outputs = [t.grad_fn for t in iter_tensors(output) if t.grad_fn is not None]
        self._calls.append(call)
        return None

    def verify(self, output: torch.Tensor) -> None:
        """Refuse the recorded forward pass if its relevance would not be computed correctly.

        Parameters
        ----------
        output : torch.Tensor
            The model output of the audited forward pass (before the engine's head).

        Raises
        ------
        TypeError
            ``output`` is not a tensor, or the forward pass contains a module or operation strict mode refuses
            (see the class docstring); the message names the module (qualified name and type), the problem and
            what to do, and how many more problems there are.
        RuntimeError
            No forward pass of the model was recorded, or ``output`` has no autograd graph.
        ValueError
            No input of the forward pass requires grad, so the graph cannot be traced to the input.
        """
        if not isinstance(output, torch.Tensor):
            raise TypeError(f'the model must return a tensor, got {type(output).__name__}')
        try:
            if not self._forwards:
                raise RuntimeError('ForwardAudit recorded no forward pass of the model; run the forward inside '
                                   '`with ForwardAudit(model) as audit:`')
            if output.grad_fn is None:
                raise RuntimeError('the model output has no autograd graph, so strict mode cannot check it: it does '
                                   'not depend on the input (e.g. .detach() or torch.no_grad() inside forward), or '
                                   'the forward ran under torch.no_grad() or torch.inference_mode()')
            if not self._tops:
                raise ValueError('no input of the audited forward pass requires grad, so its graph cannot be traced '
                                 'to the input; call x.requires_grad_() before the forward')
            problems = self._call_problems() + self._graph_problems(output.grad_fn)
            if problems:
                raise TypeError(_report(problems))
        finally:
            self._reset()

    def _call_problems(self) -> list:
        problems, reported = [], set()
        for call in self._calls:
            if call.rule is None:
                continue
            where = _where(call.name, call.module)
            rule = type(call.rule).__name__
            count = self._counts.get(id(call.module), 0)
            if count > 1 and _stores_input(call.rule) and id(call.module) not in reported:
                reported.add(id(call.module))
                problems.append(
                    f'unsupported layer {where}: called {count} times in one forward, but its rule {rule} keeps '
                    'only the input of the last call, so the relevance of the other calls is wrong. Use a separate '
                    'module instance for each use')
            if not call.single_output:
                problems.append(
                    f'unsupported layer {where}: it has the rule {rule} but does not return a single tensor; LRP '
                    'rules map one tensor to one tensor')
            if call.grad_inputs > 1:
                problems.append(
                    f'unsupported layer {where}: it has the rule {rule} but receives {call.grad_inputs} input '
                    'tensors that require grad; Zennit rules propagate relevance to a single input')
        return problems

    def _graph_problems(self, root) -> list:
        # the inside of a module with a rule is replaced by the rule: jump from its output to its inputs
        jumps = {}
        for call in self._calls:
            if call.rule is not None and call.single_output and call.outputs:
                jumps[call.outputs[0]] = call.inputs
        top_ids = {id(top) for top in self._tops}
        top_nodes = {top.grad_fn for top in self._tops if top.grad_fn is not None}

        def successors(node) -> list:
            if node in jumps:
                return jumps[node]
            if node in top_nodes:
                return [_TOP]
            return [child for child, _ in node.next_functions if child is not None]

        depends = {}
        stack, opened = [root], set()
        while stack:
            node = stack[-1]
            if node in depends:
                stack.pop()
                continue
            if node not in opened:
                opened.add(node)
                stack.extend(child for child in successors(node) if child is not _TOP and child not in depends)
                continue
            stack.pop()
            if type(node).__name__ == 'AccumulateGrad':
                depends[node] = id(node.variable) in top_ids
            else:
                depends[node] = any(child is _TOP or depends.get(child, False) for child in successors(node))
        bad = []
        for node, dependent in depends.items():
            if not dependent or node in jumps or node in top_nodes or type(node).__name__ == 'AccumulateGrad':
                continue
            branches = sum(1 for child, _ in node.next_functions if child is not None and depends.get(child, False))
            reason = _judge(node, branches)
            if reason is not None:
                bad.append((node, reason))
        bad.sort(key=lambda item: sequence_number(item[0]))  # in the order the forward pass ran them
        return [f'unsupported operation {type(node).__name__} in {self._owner(node)}: {reason}'
                for node, reason in bad]

    def _owner(self, node) -> str:
        """The innermost recorded module call whose forward produced ``node``: the first call (in the order calls
        finished, children before parents) whose graph between its inputs and outputs contains it."""
        for call in self._calls:
            if call.span is None:
                call.span = _span(call)
            if node in call.span:
                return _where(call.name, call.module)
        return f'the forward of {type(self.model).__name__}'


def _span(call: _Call) -> set:
    """Graph nodes between a call's outputs and inputs (the operations its forward ran)."""
    stop = {node for node in call.inputs if node is not _TOP}
    seen, stack = set(), [node for node in call.outputs if node not in stop]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions if child is not None and child not in stop)
    return seen
