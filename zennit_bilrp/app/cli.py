"""The ``zennit-bilrp`` command: BiLRP pictures from image files, offline, and the context-study tables.

::

    zennit-bilrp explain IMG_A IMG_B [--model NAME|package.module:callable] [--weights PATH|DEFAULT]
                         [--layer NAME] [--similarity dot|cosine] [--composite NAME] [--patch N]
                         [--top-k K | --threshold T] [--size H W] [--out FILE] [--device cpu|cuda]
                         [--background light|dark] [--save-relevance FILE.npz] [--strict|--no-strict]
                         [--dtype float32|float64]
    zennit-bilrp demo [--out FILE] [--model pretrained|toy] [--size H W] [--patch N] [--top-k K]
    zennit-bilrp explain-text SENTENCE_A SENTENCE_B [--model PATH] [--out FILE]
    zennit-bilrp explain-image-text IMAGE CAPTION --model FOLDER [--out FILE] [--csv FILE]
                                    [--family conservative|attnlrp] [--top-k K] [--save-relevance FILE.npz]
    zennit-bilrp explain-images IMAGE_A IMAGE_B --model FOLDER [--out FILE] [--pooling model|cls|mean|cls_mean]
    zennit-bilrp study merge OUT_DIR
    zennit-bilrp study summarize OUT_DIR [--baseline MODEL] [--metrics M ...] [--n-boot N]
    zennit-bilrp --version

Models: ``demo`` (the shipped offline demo encoder, default), any torchvision model name (random weights unless
``--weights`` is given; ``--weights DEFAULT`` uses torchvision's pretrained weights only if they are already in
the local torch cache, nothing is downloaded), or ``package.module:callable``, a Python factory that returns the
model (called without arguments; the module must be importable). ``--weights PATH`` loads a state dict into the
model, with ``torch.load(weights_only=True)``: files hold tensors, never code, so pickled whole models are refused.
``--layer NAME`` makes the output of the submodule ``NAME`` the embedding (one forward that stops right after that
module). Torchvision models get the preprocessing of their pretrained weights, ``weights.transforms()`` (resize,
center crop, mean and standard deviation; no weights file needed), unless ``--size`` asks for another size (then
only the normalization). Before the long part the command prints the predicted cost (the engine's plan: path and
number of backward passes) and shows a progress bar; ``--save-relevance`` writes the whole result
(:meth:`BiLRPResult.save <zennit_bilrp.core.results.BiLRPResult.save>`).

Each command lives in its own module: :mod:`~zennit_bilrp.app.explain_cli`, :mod:`~zennit_bilrp.app.demo_cli`,
:mod:`~zennit_bilrp.app.text_cli`, :mod:`~zennit_bilrp.app.vision_cli` (the image-caption and image-image commands
on local Hugging Face folders) and :mod:`~zennit_bilrp.app.study_cli`; model loading is library logic in
:mod:`zennit_bilrp.models.loading`. ``study merge`` and ``study summarize`` are the table steps of
:class:`~zennit_bilrp.analysis.study.ContextStudy`: merge the per-rank ``pairs*.csv`` files of ``OUT_DIR`` into
``pairs.csv`` (:func:`~zennit_bilrp.analysis.study.merge_results`), and write ``OUT_DIR/summary.csv`` with means,
bootstrap intervals and paired differences per model (:func:`~zennit_bilrp.analysis.study.summarize`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli_support import CLIError
from .demo_cli import add_demo_parser
from .explain_cli import add_explain_parser
from .study_cli import add_study_parser
from .text_cli import add_text_parser
from .vision_cli import add_image_text_parser, add_images_parser

__all__ = ['main', 'build_parser']


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zennit-bilrp``: each sub-command sets ``run``, the function that executes it."""
    from ..version import __version__

    parser = argparse.ArgumentParser(prog='zennit-bilrp', description='BiLRP explanations of image similarity.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    add_explain_parser(sub)
    add_demo_parser(sub)
    add_study_parser(sub)
    add_text_parser(sub)
    add_image_text_parser(sub)
    add_images_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``zennit-bilrp``; returns the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CLIError as error:
        print(f'zennit-bilrp: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
