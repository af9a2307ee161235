r"""Image–image BiLRP with vision-transformer embeddings (ViT, DINOv2, CLIP/SigLIP vision towers, torchvision and
timm ViTs).

:func:`explain_images` explains the cosine similarity of two images' embeddings
(:class:`~zennit_bilrp.lrp.towers.ImageEncoder`: class token, mean of the patch tokens or the model's own pooling)
with :class:`~zennit_bilrp.core.engine.BiLRP` and :class:`~zennit_bilrp.lrp.transformers.TransformerLRP`. By default
the relevance is pooled on the model's own patch grid, so each entry :math:`R_{pp'}` is a pair of tokens (class and
register tokens carry no relevance: they are constants). :func:`load_image_encoder` reads a local Hugging Face
model folder, offline.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

from ..core.engine import BiLRP
from ..core.pooling import Pooling
from ..core.results import BiLRPResult
from ..lrp.text_transformers import TEXT_EXTRA
from ..lrp.towers import ImageEncoder
from ..lrp.transformers import DEFAULT_FAMILY, TransformerLRP

__all__ = ['load_image_encoder', 'explain_images']


def load_image_encoder(path: Union[str, os.PathLike], pooling: str = 'model', dtype: torch.dtype = torch.float32,
                       project: bool = True) -> ImageEncoder:
    """An :class:`~zennit_bilrp.lrp.towers.ImageEncoder` of a local Hugging Face model folder (ViT, DINOv2, CLIP,
    SigLIP; ``save_pretrained`` output), loaded offline.

    Raises
    ------
    FileNotFoundError
        If the folder has no ``config.json``.
    TypeError
        If the model is not a supported vision model.
    """
    try:
        from transformers import AutoModel
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(f'loading Hugging Face vision models needs the transformers package: {TEXT_EXTRA}') \
            from error
    if not os.path.isfile(os.path.join(path, 'config.json')):
        raise FileNotFoundError(f'{path} is not a model folder (no config.json)')
    model = AutoModel.from_pretrained(str(path), local_files_only=True).to(dtype).eval()
    return ImageEncoder(model, pooling=pooling, project=project)


def explain_images(encoder: ImageEncoder, image_a: torch.Tensor, image_b: torch.Tensor, composite=None,
                   family: str = DEFAULT_FAMILY, bilrp: Optional[BiLRP] = None,
                   pooling: Union[None, int, tuple, Pooling] = None, marginals: bool = True) -> BiLRPResult:
    """Explain the cosine similarity of the embeddings of image pairs, patch by patch.

    Parameters
    ----------
    encoder : ImageEncoder
        The image model.
    image_a, image_b : torch.Tensor
        Preprocessed images ``(B, C, H, W)`` (one pair per row; the same size on both sides, so that both go
        through one forward pass).
    composite : zennit.core.Composite, optional
        Default ``TransformerLRP(family)``.
    family : {'conservative', 'attnlrp'}
        Rule family of the default composite.
    bilrp : BiLRP, optional
        An engine to reuse; overrides ``composite``.
    pooling : int, tuple or Pooling, optional
        Default: the model's patch size (:meth:`~zennit_bilrp.lrp.towers.ImageEncoder.patch_pooling`), one entry
        per patch token.
    marginals : bool
        Also compute the exact pixel-resolution marginals.

    Returns
    -------
    BiLRPResult
        ``relevance`` ``(B, P, P)`` on the patch grids.
    """
    engine = BiLRP(encoder, composite=TransformerLRP(family) if composite is None else composite,
                   similarity='cosine') if bilrp is None else bilrp
    if pooling is None:
        pooling = encoder.patch_pooling(*image_a.shape[2:])
    return engine.explain(image_a, image_b, pooling=pooling, marginals=marginals)
