"""The ``zennit-bilrp explain-text`` command: explain the similarity of two sentences token by token, offline.

::

    zennit-bilrp explain-text "A cat sits on the mat." "A kitten is sitting on a rug." --out pair.png

uses all-MiniLM-L6-v2 from the ``[text]`` extra (files verified by SHA-256); ``--model PATH`` takes a local
sentence-transformers folder of a supported architecture instead (BERT, RoBERTa, DistilBERT, MPNet). The figure
shows the two sentences with lines between the strongest token pairs and the token-by-token matrix
(:func:`~zennit_bilrp.app.text_viz.plot_text_bilrp`); ``--csv`` also writes the matrix with token labels.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .cli_support import CLIError, check_dpi, check_out, check_positive, user_errors

__all__ = ['add_text_parser', 'run_explain_text', 'TEXT_RULES']

#: ``--rule`` choices: the NAACL 2024 recipe (LRP-0) and LRP-gamma in the Linear layers
TEXT_RULES = ('lrp0', 'gamma')


def add_text_parser(sub) -> None:
    """Add the ``explain-text`` sub-command to the ``zennit-bilrp`` sub-parsers ``sub``."""
    parser = sub.add_parser('explain-text', help='explain the similarity of two sentences token by token',
                            description='BiLRP of the cosine similarity of two sentences under a sentence '
                                        'encoder (default: all-MiniLM-L6-v2, offline).')
    parser.add_argument('sentence_a', help='first sentence')
    parser.add_argument('sentence_b', help='second sentence')
    parser.add_argument('--out', default='pair.png', help='figure to write (.png, .svg or .pdf; default pair.png)')
    parser.add_argument('--model', default=None, metavar='PATH',
                        help='a local sentence-transformers model folder (default: all-MiniLM-L6-v2 of the [text] '
                             'extra)')
    parser.add_argument('--rule', choices=TEXT_RULES, default='lrp0',
                        help='rule of the Linear layers: lrp0 (the NAACL 2024 recipe, default) or gamma')
    parser.add_argument('--top-k', type=int, default=12, help='token pairs drawn as lines (default 12)')
    parser.add_argument('--hide-special', action='store_true', help='leave [CLS]/[SEP] out of the figure')
    parser.add_argument('--csv', default=None, metavar='PATH', help='also write the token-by-token matrix as CSV')
    parser.add_argument('--background', choices=('light', 'dark'), default='light',
                        help='figure background (default light)')
    parser.add_argument('--dpi', type=int, default=150, help='resolution of raster figures (default 150)')
    parser.add_argument('--float64', action='store_true', help='compute in float64 (slower)')
    parser.set_defaults(run=run_explain_text)


def _write_csv(explanation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix = explanation.relevance.detach().cpu().double().numpy()
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['token_a \\ token_b'] + list(explanation.tokens_b))
        for token, row in zip(explanation.tokens_a, matrix):
            writer.writerow([token] + [f'{value:.6g}' for value in row])


def run_explain_text(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp explain-text``; returns the figure path.

    Raises
    ------
    zennit_bilrp.app.cli_support.CLIError
        For bad arguments, a missing or unverifiable model, or an unsupported architecture.
    """
    import torch

    from ..lrp.transformers import TransformerLRP
    from ..models.text import explain_text, load_sentence_encoder
    from .text_viz import plot_text_bilrp
    from .viz import save_figure

    check_out(args.out)
    check_positive(args.top_k, '--top-k')
    check_dpi(args.dpi)
    for name in ('sentence_a', 'sentence_b'):
        if not getattr(args, name).strip():
            raise CLIError(f'{name} is empty')
    if args.model is not None and not Path(args.model).is_dir():
        raise CLIError(f'--model {args.model!r} is not a folder')
    with user_errors(ImportError, FileNotFoundError, ValueError, TypeError, OSError):
        encoder = load_sentence_encoder(args.model, dtype=torch.float64 if args.float64 else torch.float32)
    composite = TransformerLRP(linear='gamma') if args.rule == 'gamma' else TransformerLRP()
    explanation = explain_text(encoder, args.sentence_a, args.sentence_b, composite=composite)
    fig = plot_text_bilrp(explanation, k=args.top_k, hide_special=args.hide_special, background=args.background)
    out = save_figure(fig, args.out, dpi=args.dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    if args.csv:
        _write_csv(explanation, Path(args.csv))
    print(f'cosine similarity {explanation.similarity:.4f}, sum of R {explanation.total:.4f}')
    for _, _, token_a, token_b, value in explanation.top_pairs(3):
        print(f'  {token_a} - {token_b}: {value:+.4f}')
    print(f'wrote {out}')
    return out
