r"""Which exact propagation to run: unit-major (one LRP pass per unit) or patch-major (one pass per patch).

The pooled factors of an input are :math:`F(x) = \mathrm{Pool}\,M(x)\,\mathrm{diag}(\phi(x))`, an :math:`h \times P`
matrix (or :math:`K \times P` for :math:`K` selected units). They can be computed two ways, with the same numbers:

- *unit-major*: row :math:`m` is one LRP backward pass of the output relevance :math:`\phi \odot e_m`
  (:math:`K` passes);
- *patch-major*: :math:`q(r) = \mathrm{Pool}\,M(x)\,(\phi \odot r)` is linear in :math:`r`, so keeping the LRP pass
  differentiable (one pass with ``create_graph=True``) and differentiating :math:`q_p` with respect to :math:`r`
  gives column :math:`p`: :math:`F_{:,p} = \partial q_p / \partial r` (:math:`P` second-order passes).

With :math:`L` the cost of one LRP pass (per seed), :math:`G` the cost of the differentiable pass and :math:`S` the
cost of one second-order pass, the predicted costs are

.. math::

    C_{\text{units}} = K\,L, \qquad C_{\text{patches}} = G + P\,S + L,

(the last :math:`L` is the verification probe, see :meth:`~zennit_bilrp.core.patches.PatchPasses.transpose`). Both
are expressed in LRP passes (:math:`L = 1`); the ratios :math:`G/L` and :math:`S/L` default to
:data:`GRAPH_RATIO` and :data:`SECOND_ORDER_RATIO` (measured on CPU) and are measured on the session when the two
predictions are within a factor :data:`AMBIGUITY` of each other (:func:`choose`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import UNIT_METHODS as UNIT_METHODS  # its earlier home
from .config import check_method

__all__ = ['Plan', 'PassCosts', 'NotDifferentiableError', 'PathFallbackWarning', 'choose',
           'GRAPH_RATIO', 'SECOND_ORDER_RATIO', 'AMBIGUITY', 'MIN_MEASURED']

#: default cost of the differentiable (``create_graph``) LRP pass, in LRP passes (measured on CPU: ResNet-18 64x64
#: float64 1 thread 3.4, ResNet-50 224x224 float32 2 threads 2.4; rounded up)
GRAPH_RATIO = 3.0
#: default cost of one second-order pass, in LRP passes (measured as above: 1.4 and 1.1, before the fast rules'
#: explicit transposed convolution made second-order passes cheaper; rounded up, so ties go unit-major)
SECOND_ORDER_RATIO = 1.5
#: measure the pass costs when the two predicted costs are within this factor of each other
AMBIGUITY = 2.0
#: ... and when the cheaper path needs at least this many passes (below, measuring costs more than it saves)
MIN_MEASURED = 16


class NotDifferentiableError(RuntimeError):
    """The LRP backward pass is not differentiable in its seed (or not linear in it): patch-major is impossible."""


class PathFallbackWarning(UserWarning):
    """``method='auto'`` chose the patch-major path, which was impossible; the unit-major path ran instead."""


@dataclass(frozen=True)
class PassCosts:
    """Cost of one pass of each kind, relative to one LRP pass (per seed, at the batching the engine uses).

    Attributes
    ----------
    graph : float
        The differentiable LRP pass (``create_graph=True``), :math:`G/L`.
    second_order : float
        One second-order pass, :math:`S/L`.
    measured : bool
        Whether measured on the session (else the defaults).
    seconds_per_pass : float or None
        Measured seconds of one LRP pass per seed, :math:`L` (``None`` for the defaults).
    """
    graph: float = GRAPH_RATIO
    second_order: float = SECOND_ORDER_RATIO
    measured: bool = False
    seconds_per_pass: Optional[float] = None


@dataclass(frozen=True)
class Plan:
    """The propagation the engine runs for one forward batch, and why.

    Attributes
    ----------
    path : {'units', 'patches'}
        Unit-major (one LRP pass per explained unit) or patch-major (one second-order pass per patch).
    method : str
        The engine's ``method`` the decision was made under (``'auto'`` decides; the others force a path).
    units : int
        Explained units :math:`K` (passes of the unit-major path).
    patches : int
        Patches :math:`P` (second-order passes of the patch-major path; the larger side for a pair).
    passes : int
        Backward passes of the chosen path: :math:`K`, or :math:`P` second-order passes plus the differentiable
        pass and the probe (:math:`P + 2`).
    cost_units, cost_patches : float
        Predicted costs of both paths in LRP passes (:math:`K` and :math:`G + P\\,S + 1`).
    costs : PassCosts
        The pass-cost ratios used.
    reason : str
        Why this path, in words.
    seconds : float or None
        Predicted seconds of the chosen path, when the pass cost was measured.
    """
    path: str
    method: str
    units: int
    patches: int
    passes: int
    cost_units: float
    cost_patches: float
    costs: PassCosts
    reason: str
    seconds: Optional[float] = None

    @property
    def speedup(self) -> float:
        """Predicted cost of the unit-major path over that of the chosen path."""
        chosen = self.cost_units if self.path == 'units' else self.cost_patches
        return self.cost_units / chosen if chosen > 0 else 1.0

    def describe(self) -> str:
        """One line: path, passes and predicted costs, e.g. for a command-line tool."""
        if self.path == 'units':
            what, cost = f'unit-major: {self.units} LRP passes', self.cost_units
            other = f'patch-major: {self.cost_patches:.1f}'
        else:
            what, cost = f'patch-major: {self.patches} second-order passes (+2)', self.cost_patches
            other = f'unit-major: {self.cost_units:.0f}'
        seconds = '' if self.seconds is None else f', about {self.seconds:.3g} s'
        return f'{what}; predicted cost {cost:.1f} LRP passes{seconds} ({other}); {self.reason}'


def predicted(units: int, patches: int, costs: PassCosts) -> tuple:
    """``(cost_units, cost_patches)`` in LRP passes."""
    return float(units), costs.graph + patches * costs.second_order + 1.0


def ambiguous(units: int, patches: int, costs: PassCosts = PassCosts()) -> bool:
    """Whether the default costs leave the choice open enough to measure the pass costs."""
    cost_units, cost_patches = predicted(units, patches, costs)
    return (min(cost_units, cost_patches) >= MIN_MEASURED
            and max(cost_units, cost_patches) <= AMBIGUITY * min(cost_units, cost_patches))


def choose(method: str, units: int, patches: int, costs: PassCosts = PassCosts(),
           differentiable: Optional[str] = None) -> Plan:
    """The path for ``units`` explained units and ``patches`` patches under ``method``.

    Parameters
    ----------
    method : {'auto', 'patches', 'batched', 'replicate', 'loop'}
        ``'auto'`` takes the cheaper predicted path; ``'patches'`` forces patch-major; the others unit-major.
    units, patches : int
        :math:`K` and :math:`P`.
    costs : PassCosts
        Pass-cost ratios (default: the measured CPU defaults).
    differentiable : str, optional
        If given, the reason why the patch-major path is impossible (then ``'auto'`` takes unit-major).

    Returns
    -------
    Plan
    """
    check_method(method)
    cost_units, cost_patches = predicted(units, patches, costs)
    source = 'measured' if costs.measured else 'default'
    if method in UNIT_METHODS:
        path, reason = 'units', f"method={method!r} forces the unit-major path"
    elif method == 'patches':
        path, reason = 'patches', "method='patches' forces the patch-major path"
    elif differentiable is not None:
        path, reason = 'units', f'patch-major is impossible: {differentiable}'
    elif cost_patches < cost_units:
        path = 'patches'
        reason = (f'{patches} patches cost less than {units} units ({source} pass costs: differentiable pass '
                  f'{costs.graph:.2g}, second-order pass {costs.second_order:.2g} LRP passes)')
    else:
        path = 'units'
        reason = (f'{units} units cost no more than {patches} patches ({source} pass costs: differentiable pass '
                  f'{costs.graph:.2g}, second-order pass {costs.second_order:.2g} LRP passes)')
    passes = units if path == 'units' else patches + 2
    seconds = None
    if costs.seconds_per_pass is not None:
        seconds = costs.seconds_per_pass * (cost_units if path == 'units' else cost_patches)
    return Plan(path, method, units, patches, passes, cost_units, cost_patches, costs, reason, seconds)
