"""The ``zennit-bilrp explain-image-text`` and ``explain-images`` commands: BiLRP of an image and a caption under a
CLIP or SigLIP model, and of two images under a vision transformer, from a local model folder, offline.

::

    zennit-bilrp explain-image-text photo.jpg "a cat on a mat" --model path/to/clip-folder --out pair.png
    zennit-bilrp explain-images a.jpg b.jpg --model path/to/dinov2-folder --out pair.png

The folder is what ``save_pretrained`` writes (the model with its tokenizer and image processor; e.g.
``CLIPModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(folder)`` and the same for
``CLIPProcessor``, on a machine with internet); nothing is downloaded (``HF_HUB_OFFLINE``, ``local_files_only``).
The image goes through the folder's image processor. ``explain-image-text`` draws
:func:`~zennit_bilrp.app.viz.image_text.plot_image_text` (patch-token pairs, the patch marginal, one heatmap per token);
``--csv`` writes the patch-by-token matrix, ``--save-relevance`` the whole explanation
(:meth:`~zennit_bilrp.models.clip.ImageTextExplanation.save`). ``explain-images`` draws
:func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp` on the model's own patch grid. ``--family`` picks the rules of
the attention (:data:`~zennit_bilrp.lrp.attention.FAMILIES`; default the conservative family).
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from .cli_support import CLIError, add_output_arguments, check_dpi, check_out, check_positive, log, user_errors

__all__ = ['add_image_text_parser', 'add_images_parser', 'run_explain_image_text', 'run_explain_images',
           'read_image']


def _common_arguments(parser, out: str) -> None:
    from ..lrp.attention import FAMILIES
    from ..lrp.transformers import DEFAULT_FAMILY

    parser.add_argument('--model', required=True, metavar='FOLDER',
                        help='a local model folder (save_pretrained output with its image processor), read offline')
    parser.add_argument('--out', default=out, help=f'figure to write (.png, .svg or .pdf; default {out})')
    parser.add_argument('--family', choices=FAMILIES, default=DEFAULT_FAMILY,
                        help=f'rules of the attention (default {DEFAULT_FAMILY})')
    parser.add_argument('--top-k', type=int, default=12, help='pairs drawn as lines (default 12)')
    parser.add_argument('--save-relevance', default=None, metavar='FILE.npz', help='also write the whole result')
    parser.add_argument('--float64', action='store_true', help='compute in float64 (slower)')
    add_output_arguments(parser, None, 150)


def _command(sub, name: str, summary: str, description: str, inputs: dict, out: str) -> argparse.ArgumentParser:
    """The sub-command ``name`` with the positional ``inputs`` (``{name: help}``) and the options both commands
    share (``out``: the default figure)."""
    parser = sub.add_parser(name, help=summary, description=description)
    for argument, text in inputs.items():
        parser.add_argument(argument, help=text)
    _common_arguments(parser, out)
    return parser


def add_image_text_parser(sub) -> None:
    """Add the ``explain-image-text`` sub-command to the ``zennit-bilrp`` sub-parsers ``sub``."""
    parser = _command(sub, 'explain-image-text', 'explain the similarity of an image and a caption',
                      'BiLRP of the cosine similarity of an image and a caption under a local CLIP or SigLIP model '
                      'folder (offline): relevance of every image patch and caption token.',
                      {'image': 'image file', 'caption': 'the caption'}, 'image_text.png')
    parser.add_argument('--csv', default=None, metavar='PATH', help='also write the patch-by-token matrix as CSV')
    parser.add_argument('--title', default=None, help='replace the figure title')
    parser.add_argument('--note', default=None, help='one more title line (e.g. "random weights")')
    parser.set_defaults(run=run_explain_image_text)


def add_images_parser(sub) -> None:
    """Add the ``explain-images`` sub-command (two images, a vision transformer) to the sub-parsers ``sub``."""
    from ..lrp.towers import POOLINGS

    parser = _command(sub, 'explain-images', 'explain the similarity of two images under a vision transformer',
                      'BiLRP of the cosine similarity of two images under a local Hugging Face vision-transformer '
                      "folder (ViT, DINOv2, CLIP, SigLIP; offline), on the model's patch grid.",
                      {'image_a': 'first image file', 'image_b': 'second image file'}, 'images.png')
    parser.add_argument('--pooling', choices=POOLINGS, default='model',
                        help="the embedding: the model's own pooling (default), class token, mean of the patch "
                             'tokens, or both')
    parser.set_defaults(run=run_explain_images)


def read_image(path: str):
    """An image file as an RGB PIL image.

    Raises
    ------
    zennit_bilrp.app.cli_support.CLIError
        If the file is missing or not an image Pillow reads.
    """
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise CLIError(f'image file {path!r} does not exist')
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except (UnidentifiedImageError, OSError) as error:
        raise CLIError(f'cannot read {path!r} as an image ({error})') from None


def _check_common(args: argparse.Namespace) -> None:
    """Arguments checked before a model is loaded."""
    check_out(args.out)
    check_positive(args.top_k, '--top-k')
    check_dpi(args.dpi)
    if args.save_relevance is not None and Path(args.save_relevance).suffix.lower() != '.npz':
        raise CLIError(f'--save-relevance {args.save_relevance!r}: the file name must end in .npz')
    if not Path(args.model).is_dir():
        raise CLIError(f'--model {args.model!r} is not a folder (give a local model folder written by '
                       'save_pretrained; nothing is downloaded)')
    if not (Path(args.model) / 'config.json').is_file():
        raise CLIError(f'--model {args.model!r} is not a model folder (no config.json)')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')  # with local_files_only: nothing is looked up online


def _device_and_dtype(args: argparse.Namespace) -> tuple:
    import torch

    from .cli_support import device

    return device(args.device), torch.float64 if args.float64 else torch.float32


def _write_csv(explanation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix = explanation.relevance.detach().cpu().double().numpy()
    columns = explanation.grid[1]
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['patch (row col) \\ token'] + [f'{i}:{t}' for i, t in enumerate(explanation.tokens)])
        for patch, row in enumerate(matrix):
            writer.writerow([f'{patch // columns} {patch % columns}'] + [f'{value:.6g}' for value in row])


def _save_figure(fig, args: argparse.Namespace) -> Path:
    import matplotlib.pyplot as plt

    from .viz import save_figure

    out = save_figure(fig, args.out, dpi=args.dpi)
    plt.close(fig)
    return out


def run_explain_image_text(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp explain-image-text``; returns the figure path.

    Raises
    ------
    zennit_bilrp.app.cli_support.CLIError
        For bad arguments, a missing image or model folder, or a folder that is not a two-tower image-text model.
    """
    _check_common(args)
    if not args.caption.strip():
        raise CLIError('the caption is empty')
    image = read_image(args.image)
    device, dtype = _device_and_dtype(args)
    from ..models.clip import explain_image_text, load_image_text_model
    from .viz.image_text import plot_image_text

    log(f'loading {args.model} (offline)')
    with user_errors(ImportError, FileNotFoundError, ValueError, TypeError, OSError):
        model = load_image_text_model(args.model, dtype=dtype)
    if model.processor is None:
        raise CLIError(f'--model {args.model!r} has no image processor (preprocessor_config.json): save the '
                       "model's processor into the folder too")
    model.image.model.to(device)  # the whole two-tower model: towers, embeddings and constants
    engine = model.bilrp(family=args.family)
    with user_errors(ValueError, TypeError):
        pixels, tokens_in, _, tokens = model.inputs(image, args.caption)
        height, width = pixels.shape[2:]
        plan = engine.plan(pixels, tokens_in, pooling=model.image.patch_pooling(height, width), pooling_b=None)
    log(f'{len(tokens)} tokens, {height} x {width} pixels ({model.image.grid(height, width)} patches); rules: '
        f'{args.family}; cost estimate (costlier tower): {plan.describe()}')
    explanation = explain_image_text(model, image, args.caption, bilrp=engine)
    fig = plot_image_text(explanation, k=args.top_k, title=True if args.title is None else args.title,
                          note=args.note, background=args.background)
    out = _save_figure(fig, args)
    if args.csv:
        _write_csv(explanation, Path(args.csv))
    if args.save_relevance:
        explanation.save(args.save_relevance)
    print(f'cosine similarity {explanation.similarity:.4f}, sum of R {explanation.total:.4f}')
    for _, (row, col), _, token, value in explanation.top_pairs(3):
        print(f'  patch ({row}, {col}) - {token}: {value:+.4g}')
    print(f'wrote {out}')
    return out


def _processor_pixels(processor, image, dtype) -> tuple:
    """``(pixel_values (1, C, H, W), (mean, std) or None)`` of an image through a Hugging Face image processor."""
    pixels = processor(images=image, return_tensors='pt')['pixel_values'].to(dtype)
    mean, std = getattr(processor, 'image_mean', None), getattr(processor, 'image_std', None)
    normalized = getattr(processor, 'do_normalize', True) and mean is not None and std is not None
    return pixels, ((mean, std) if normalized else None)


def run_explain_images(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp explain-images``; returns the figure path.

    Raises
    ------
    zennit_bilrp.app.cli_support.CLIError
        For bad arguments, missing images, a missing folder or an unsupported model.
    """
    _check_common(args)
    images = [read_image(args.image_a), read_image(args.image_b)]
    device, dtype = _device_and_dtype(args)
    from ..core.engine import BiLRP
    from ..lrp.transformers import TransformerLRP
    from ..models.vision import explain_images, load_image_encoder
    from .cli_support import result_to_cpu
    from .viz import plot_bilrp

    log(f'loading {args.model} (offline)')
    with user_errors(ImportError, FileNotFoundError, ValueError, TypeError, OSError):
        encoder = load_image_encoder(args.model, pooling=args.pooling, dtype=dtype)
        from transformers import AutoImageProcessor
    try:
        processor = AutoImageProcessor.from_pretrained(args.model, local_files_only=True)
    except (OSError, ValueError):
        raise CLIError(f'--model {args.model!r} has no image processor (preprocessor_config.json): save the '
                       "model's image processor into the folder too") from None
    encoder.model.to(device)  # the whole model: blocks, class and register tokens, position embeddings
    encoder.to(device)
    with user_errors(ValueError, TypeError):
        prepared = [_processor_pixels(processor, image, dtype) for image in images]
        x_a, x_b = (pixels.to(device) for pixels, _ in prepared)
        if x_a.shape != x_b.shape:
            raise ValueError(f'the processed images differ in size: {tuple(x_a.shape)} and {tuple(x_b.shape)}')
        pooling = encoder.patch_pooling(*x_a.shape[2:])
    engine = BiLRP(encoder, composite=TransformerLRP(args.family), similarity='cosine')
    plan = engine.plan(x_a, x_b, pooling=pooling)
    log(f'{x_a.shape[2]} x {x_a.shape[3]} pixels, {encoder.grid(*x_a.shape[2:])} patches of {encoder.patch_size}; '
        f'rules: {args.family}; cost estimate: {plan.describe()}')
    result = result_to_cpu(explain_images(encoder, x_a, x_b, bilrp=engine, pooling=pooling))
    fig = plot_bilrp(result, x_a.cpu(), x_b.cpu(), k=args.top_k, background=args.background,
                     denormalize=prepared[0][1])
    out = _save_figure(fig, args)
    if args.save_relevance:
        result.save(args.save_relevance)
    print(f'cosine similarity {float(result.similarity[0]):.4f}, sum of R {float(result.relevance.sum()):.4f}')
    print(f'wrote {out}')
    return out
