r"""Model-randomization sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation that does not change when the network's weights are replaced by random ones cannot be explaining
what the network learned. :func:`cascading_randomization` re-initializes the blocks of a *copy* of the model from
the top (output side) down, one more block at each step, re-explains with any method, and reports the Spearman
rank correlation of each explanation with the original one (and of their absolute values, since a sign flip alone
is also a change Adebayo et al. count separately). A faithful method's correlation falls as blocks are randomized;
the user's model is never modified.

Blocks are module names in forward order (:func:`randomizable_blocks` proposes the top-level children that hold
parameters, with sequential containers such as EfficientNet's ``blocks`` split into their members). A block is
re-initialized by each submodule's own ``reset_parameters()`` (PyTorch's default initialization; BatchNorm also
resets its running statistics), under a fixed seed; parameters of modules without it are redrawn from a normal
distribution with the parameter's own mean and standard deviation.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

__all__ = ['randomizable_blocks', 'randomize_block', 'spearman', 'cascading_randomization']

_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList)


def _has_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_composite(module: torch.nn.Module) -> bool:
    """Whether a module holds sub-modules with parameters (a block of layers, not a single layer)."""
    return any(_has_parameters(child) for child in module.children())


def randomizable_blocks(model: torch.nn.Module) -> list[str]:
    """Names of the model's blocks in registration order: top-level children with parameters, a sequential
    container of several blocks of layers split into them (e.g. ``['stem', 'blocks.0', ..., 'blocks.15',
    'head']`` for EfficientNet-Lite0; a container of single layers stays one block)."""
    names = []
    for name, child in model.named_children():
        if not _has_parameters(child):
            continue
        members = [(f'{name}.{sub}', module) for sub, module in child.named_children() if _has_parameters(module)]
        if isinstance(child, _CONTAINERS) and len(members) > 1 and all(_is_composite(m) for _, m in members):
            names.extend(member for member, _ in members)
        else:
            names.append(name)
    if not names and _has_parameters(model):
        names.append('')
    return names


def randomize_block(block: torch.nn.Module, seed: int = 0) -> None:
    """Re-initialize every parameter of ``block`` in place (see the module docstring), reproducibly for ``seed``;
    the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        done = set()
        for module in block.modules():
            own = list(module.parameters(recurse=False))
            if hasattr(module, 'reset_parameters') and callable(module.reset_parameters):
                module.reset_parameters()
                done.update(id(p) for p in own)
        with torch.no_grad():
            for parameter in block.parameters():
                if id(parameter) in done:
                    continue
                std = float(parameter.std()) if parameter.numel() > 1 else 1.0
                parameter.copy_(torch.randn_like(parameter) * (std if std > 0 else 1.0) + parameter.mean())


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` with ties averaged."""
    order = torch.argsort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) + 1) / 2
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two tensors of equal size (flattened; ties get average ranks; NaN when one is
    constant)."""
    a = torch.as_tensor(a).detach().reshape(-1).cpu().double()
    b = torch.as_tensor(b).detach().reshape(-1).cpu().double()
    if a.shape != b.shape:
        raise ValueError(f'explanations differ in size: {a.numel()} vs {b.numel()}')
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else float('nan')


def cascading_randomization(model: torch.nn.Module, explain: Callable[[torch.nn.Module], torch.Tensor],
                            blocks: Optional[Sequence[str]] = None, steps: Optional[Sequence[int]] = None,
                            seed: int = 0, progress: bool = False) -> list[dict]:
    """Randomize a copy of ``model`` block by block from the top down and compare its explanations with the
    original one.

    Parameters
    ----------
    model : torch.nn.Module
        The model (deep-copied once; never modified).
    explain : callable
        ``explain(model) -> tensor``: the explanation of a fixed input under the given model (e.g. BiLRP's pooled
        pairwise relevance, or a baseline's); called with the copy.
    blocks : sequence of str, optional
        Block names in forward order (default :func:`randomizable_blocks`); randomized from the last one.
    steps : sequence of int, optional
        Numbers of randomized blocks at which to explain (default ``0..len(blocks)``); 0 is always included.
    seed : int
        Block ``j`` (counted from the top) is re-initialized with seed ``seed + j``.
    progress : bool
        tqdm progress bar.

    Returns
    -------
    list of dict
        One row per step: ``randomized`` (number of blocks), ``block`` (the last block randomized, ``''`` at 0),
        ``spearman``, ``spearman_abs`` (of absolute values).
    """
    blocks = list(randomizable_blocks(model) if blocks is None else blocks)
    modules = dict(model.named_modules())
    missing = [name for name in blocks if name not in modules]
    if missing:
        raise ValueError(f'no such blocks in the model: {missing}; known blocks: {randomizable_blocks(model)}')
    steps = sorted({0, *(range(len(blocks) + 1) if steps is None else steps)})
    if steps[-1] > len(blocks) or steps[0] < 0:
        raise ValueError(f'steps must lie in 0..{len(blocks)}, got {steps}')
    work = copy.deepcopy(model)
    work_modules = dict(work.named_modules())
    reference = torch.as_tensor(explain(work)).detach().cpu().double()
    rows = [{'randomized': 0, 'block': '', 'spearman': spearman(reference, reference),
             'spearman_abs': spearman(reference.abs(), reference.abs())}]
    done = 0
    for step in tqdm(steps[1:], desc='randomization', disable=not progress):
        while done < step:
            randomize_block(work_modules[blocks[len(blocks) - 1 - done]], seed + done)
            done += 1
        current = torch.as_tensor(explain(work)).detach().cpu().double()
        rows.append({'randomized': step, 'block': blocks[len(blocks) - step], 'spearman': spearman(reference, current),
                     'spearman_abs': spearman(reference.abs(), current.abs())})
    return rows
