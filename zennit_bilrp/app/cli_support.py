"""What the ``zennit-bilrp`` commands share: the user-error type, messages on stderr and the argument checks that
several commands make (output file, resolution, device, patch size, number of pairs drawn)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

__all__ = ['CLIError', 'user_errors', 'log', 'warn', 'device', 'check_out', 'check_dpi', 'check_positive',
           'check_patch', 'pairs_to_draw', 'result_to_cpu', 'add_output_arguments', 'add_out_argument']


class CLIError(Exception):
    """A user error: printed as ``zennit-bilrp: error: ...`` with exit status 2."""


@contextmanager
def user_errors(*types: type):
    """Turn the exceptions ``types`` raised inside the block into :class:`CLIError` with the same message."""
    try:
        yield
    except types as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError quotes
        raise CLIError(str(message)) from None


def log(message: str) -> None:
    """Print a progress message on stderr (stdout keeps the results)."""
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print ``zennit-bilrp: warning: message`` on stderr."""
    log(f'zennit-bilrp: warning: {message}')


def device(name: str) -> torch.device:
    """The torch device ``name`` (``'cpu'`` or ``'cuda'``), refused when CUDA is asked for but absent."""
    if name == 'cuda' and not torch.cuda.is_available():
        raise CLIError('--device cuda requested but CUDA is not available; use --device cpu')
    return torch.device(name)


def check_out(out: str) -> None:
    """``--out`` names a figure format :func:`~zennit_bilrp.app.viz.export.save_figure` writes."""
    from .viz.export import SAVE_FORMATS

    if Path(out).suffix.lower() not in SAVE_FORMATS:
        raise CLIError(f'--out {out!r}: the file name must end in one of {", ".join(SAVE_FORMATS)}')


def check_positive(value: Optional[int], flag: str, what: str = 'positive') -> None:
    """``value`` (of the option ``flag``) is ``None`` or at least 1."""
    if value is not None and value < 1:
        raise CLIError(f'{flag} must be {what}, got {value}')


def check_dpi(dpi: int) -> None:
    """``--dpi`` is positive."""
    check_positive(dpi, '--dpi')


def check_patch(patch: int, size: tuple) -> None:
    """The image ``size = (H, W)`` is positive and divisible by the patch size ``patch``."""
    if size[0] < 1 or size[1] < 1:
        raise CLIError(f'--size must be positive, got {size[0]} x {size[1]}')
    if size[0] % patch or size[1] % patch:
        raise CLIError(f'--patch {patch} does not divide the image size {size[0]} x {size[1]}; choose a patch '
                       'size that divides both (or a matching --size)')


def pairs_to_draw(top_k: int, threshold: Optional[float], size: tuple, patch: int) -> int:
    """``top_k``, at most the number of patch pairs of two ``size`` images (with a warning when clamped)."""
    pairs = ((size[0] // patch) * (size[1] // patch)) ** 2
    if threshold is None and top_k > pairs:
        warn(f'--top-k {top_k} is more than the {pairs} patch pairs of {size[0]} x {size[1]} images with '
             f'{patch}-pixel patches; drawing all {pairs}')
        return pairs
    return top_k


def result_to_cpu(result):
    """The tensors of a :class:`~zennit_bilrp.core.results.BiLRPResult` moved to the CPU (in place; returned)."""
    for name in ('relevance', 'similarity', 'marginal_a', 'marginal_b'):
        value = getattr(result, name)
        if value is not None:
            setattr(result, name, value.detach().cpu())
    result.factors_a = result.factors_a.to('cpu')
    result.factors_b = result.factors_b.to('cpu')
    return result


def add_output_arguments(parser, out: Optional[str], dpi: int) -> None:
    """``--out`` (default ``out``; left out for ``None``, see :func:`add_out_argument`), ``--device``,
    ``--background`` and ``--dpi`` (default ``dpi``): the figure and device options of the image commands."""
    if out is not None:
        add_out_argument(parser, out)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='where to compute')
    parser.add_argument('--background', default='light', choices=['light', 'dark'], help='figure color theme')
    parser.add_argument('--dpi', type=int, default=dpi, help='resolution of raster figures')


def add_out_argument(parser, out: str) -> None:
    """``--out``: the figure file (default ``out``)."""
    parser.add_argument('--out', default=out, help='output figure (.png, .svg or .pdf)')
