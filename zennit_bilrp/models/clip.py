r"""Image–text BiLRP for CLIP-style two-tower models (Hugging Face ``CLIPModel`` and ``SiglipModel``, OpenCLIP).

:func:`explain_image_text` explains the cosine similarity :math:`y = \langle \phi(x), \psi(t) \rangle /
(\|\phi(x)\| \|\psi(t)\|)` of an image :math:`x` and a caption :math:`t` (CLIP's logit before the temperature; for
SigLIP the cosine inside its sigmoid) with :class:`~zennit_bilrp.core.engine.BiLRP` on the two towers
(:class:`~zennit_bilrp.lrp.towers.ImageEncoder` and :class:`~zennit_bilrp.lrp.towers.CaptionEncoder`, each with its
own composite): the relevance :math:`R_{pt}` of every image patch :math:`p` (the model's own patch grid) and caption
token :math:`t`, with :math:`\sum_{pt} R_{pt} \approx y` (exact for bias-free models under the conservative rules).
The result (:class:`ImageTextExplanation`) holds what a figure needs: the image, the patch grid, the tokens, the
per-token heatmaps over the image, the marginals and the strongest patch–token pairs; it is saved to and loaded from
one ``.npz`` file.

Nothing is downloaded: :func:`load_image_text_model` reads a local model folder (``save_pretrained`` output, with
its tokenizer and image processor), :func:`image_text_model` wraps a model in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..core.engine import BiLRP
from ..core.results import BiLRPResult
from ..lrp.text_transformers import TEXT_EXTRA
from ..lrp.towers import CaptionEncoder, ImageEncoder
from ..lrp.transformers import DEFAULT_FAMILY, TransformerLRP

__all__ = ['ImageTextModel', 'image_text_model', 'load_image_text_model', 'ImageTextExplanation',
           'explain_image_text']


@dataclass
class ImageTextModel:
    """A CLIP-style model ready for BiLRP (see :func:`image_text_model`); its fields:

    Parameters
    ----------
    image : ImageEncoder
        The image tower (images ``(N, C, H, W)`` to image embeddings).
    text : CaptionEncoder
        The text tower (token inputs ``(N, H + 1, L)`` to caption embeddings).
    tokenizer : optional
        The Hugging Face tokenizer (needed to explain captions given as strings).
    processor : optional
        The Hugging Face image processor (needed for images given as PIL images or arrays).
    path : str, optional
        The model folder.
    """
    image: ImageEncoder
    text: CaptionEncoder
    tokenizer: object = None
    processor: object = None
    path: Optional[str] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.image.patch_embedding.weight.dtype

    def tokenize(self, captions: Sequence[str]) -> tuple:
        """``(input_ids (N, L), attention_mask (N, L))`` as the model expects them (CLIP: padded to the longest
        caption; SigLIP: padded to its fixed length, all positions attended; OpenCLIP: its context length, the mask
        ending at the end-of-text token)."""
        if self.tokenizer is None:
            raise ValueError('this ImageTextModel has no tokenizer: pass tokenizer= to image_text_model, or token ids')
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions) or not len(captions):
            raise TypeError('captions must be a non-empty sequence of strings')
        if self.text.kind == 'open_clip':  # an OpenCLIP tokenizer returns the ids
            ids = self.tokenizer(list(captions))
            return ids, (torch.arange(ids.shape[1])[None] <= self.text.end_positions(ids)[:, None]).long()
        padding = 'max_length' if self.text.kind == 'siglip' else True
        batch = self.tokenizer(list(captions), padding=padding, truncation=True, return_tensors='pt')
        ids = batch['input_ids']
        return ids, batch.get('attention_mask', torch.ones_like(ids))

    def tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list:
        """The token strings of one caption ``(1, L)`` (positions with mask 0 included only for SigLIP, which
        pools the last position)."""
        ids = input_ids[0].tolist()
        ids = ids if self.text.kind == 'siglip' else ids[:int(attention_mask[0].sum())]
        if hasattr(self.tokenizer, 'convert_ids_to_tokens'):
            return self.tokenizer.convert_ids_to_tokens(ids)
        decoder = getattr(self.tokenizer, 'decoder', None)  # OpenCLIP's SimpleTokenizer
        return [decoder[i] if isinstance(decoder, dict) and i in decoder else str(i) for i in ids]

    def _mean_std(self) -> tuple:
        """The normalization of the image processor (Hugging Face attributes, or a torchvision ``Normalize``)."""
        mean, std = (getattr(self.processor, key, None) for key in ('image_mean', 'image_std'))
        for transform in getattr(self.processor, 'transforms', ()):
            if type(transform).__name__ == 'Normalize':
                mean, std = transform.mean, transform.std
        return mean, std

    def pixels(self, image) -> tuple:
        """``(pixel_values (1, C, H, W), display (C, H, W) in [0, 1])`` of an image: a tensor ``(C, H, W)`` or
        ``(1, C, H, W)`` already preprocessed, or a PIL image / array for the image processor."""
        if isinstance(image, torch.Tensor):
            pixels = image[None] if image.dim() == 3 else image
            if pixels.dim() != 4 or pixels.shape[0] != 1:
                raise ValueError(f'image tensor of shape {tuple(image.shape)}; expected (C, H, W) or (1, C, H, W)')
        elif self.processor is None:
            raise ValueError('this ImageTextModel has no image processor: pass processor= to image_text_model, or '
                             'a preprocessed image tensor (C, H, W)')
        elif hasattr(self.processor, 'transforms'):  # OpenCLIP: a torchvision transform
            pixels = self.processor(image)[None]
        else:
            pixels = self.processor(images=image, return_tensors='pt')['pixel_values']
        pixels = pixels.to(self.dtype)
        mean, std = self._mean_std()
        if mean is not None and std is not None:
            display = (pixels[0] * torch.as_tensor(std).to(pixels)[:, None, None]
                       + torch.as_tensor(mean).to(pixels)[:, None, None])
        else:
            display = (pixels[0] - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-12)
        return pixels, display.clamp(0, 1).detach().cpu()

    def inputs(self, image, caption: Union[str, torch.Tensor], attention_mask: Optional[torch.Tensor] = None
               ) -> tuple:
        """What the two-tower engine takes for one image and one caption, on the model's device.

        Parameters
        ----------
        image, caption, attention_mask
            As in :func:`explain_image_text`.

        Returns
        -------
        tuple
            ``(pixels (1, C, H, W), tokens_in (1, H + 1, L), display (C, H, W) in [0, 1], token strings)``; for CLIP
            and OpenCLIP ``tokens_in`` ends at the pooled end-of-text token (after it the causal tower computes
            nothing that reaches the embedding).
        """
        device = self.image.patch_embedding.weight.device
        if isinstance(caption, str):
            if not caption.strip():
                raise ValueError('caption must be a non-empty string')
            ids, mask = (tensor.to(device) for tensor in self.tokenize([caption]))
        elif isinstance(caption, torch.Tensor) and caption.dim() == 2 and caption.shape[0] == 1:
            ids = caption.to(device)
            # default: up to the pooled end-of-text token (CLIP, OpenCLIP), or everything (SigLIP)
            mask = self.text.embed(ids)[:, -1].long() if attention_mask is None else attention_mask.to(device)
        else:
            raise TypeError('caption must be a string or token ids of shape (1, L)')
        pixels, display = self.pixels(image)
        tokens_in = self.text.embed(ids, mask).to(self.dtype)
        if self.text.kind != 'siglip':
            tokens_in = tokens_in[..., :int(mask[0].sum())]
        return pixels.to(device), tokens_in, display, self.tokens(ids, mask)

    def bilrp(self, composite=None, composite_b=None, family: str = DEFAULT_FAMILY, **kwargs) -> BiLRP:
        """The two-tower engine: image tower ``a``, text tower ``b``, cosine similarity, ``head='none'``; default
        composites ``TransformerLRP(family)`` for each tower; ``kwargs`` go to
        :class:`~zennit_bilrp.core.engine.BiLRP`."""
        kwargs.setdefault('similarity', 'cosine')
        return BiLRP(self.image, composite=TransformerLRP(family) if composite is None else composite,
                     model_b=self.text, composite_b=TransformerLRP(family) if composite_b is None else composite_b,
                     head='none', **kwargs)


def image_text_model(model: torch.nn.Module, tokenizer=None, processor=None, pooling: str = 'model',
                     path: Optional[str] = None) -> ImageTextModel:
    """Wrap a ``CLIPModel``, ``SiglipModel`` or OpenCLIP ``CLIP`` (in memory) for :func:`explain_image_text`.

    Parameters
    ----------
    model : torch.nn.Module
        The two-tower model, in eval mode.
    tokenizer, processor : optional
        Its tokenizer and image processor (for captions as strings and images as PIL images or arrays; for OpenCLIP
        the tokenizer and the preprocessing transform of ``open_clip``).
    pooling : str
        Pooling of the image tower (:class:`~zennit_bilrp.lrp.towers.ImageEncoder`; ``'model'``: the model's own).

    Raises
    ------
    TypeError
        If ``model`` is not a supported two-tower model.
    """
    open_clip = hasattr(model, 'visual') and (hasattr(model, 'transformer') or hasattr(model, 'text'))
    if not (hasattr(model, 'vision_model') and hasattr(model, 'text_model')) and not open_clip:
        raise TypeError(f'{type(model).__name__} is not a two-tower image-text model (CLIPModel, SiglipModel, '
                        'OpenCLIP CLIP)')
    return ImageTextModel(ImageEncoder(model, pooling=pooling), CaptionEncoder(model), tokenizer, processor, path)


def load_image_text_model(path: Union[str, os.PathLike], dtype: torch.dtype = torch.float32) -> ImageTextModel:
    """Load a CLIP or SigLIP model folder (``save_pretrained`` output with tokenizer and image processor), offline.

    Parameters
    ----------
    path : str or os.PathLike
        The local folder (nothing is downloaded).
    dtype : torch.dtype
        Parameter dtype (``torch.float64`` for tests against references).

    Raises
    ------
    FileNotFoundError
        If the folder has no ``config.json``.
    TypeError
        If the folder holds a model that is not a two-tower image-text model (checked before its tokenizer is read).
    ImportError
        Without the ``transformers`` package (names the extra).
    """
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(f'explaining CLIP models needs the transformers package: {TEXT_EXTRA}') from error
    folder = Path(path)
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{folder} is not a model folder (no config.json); give a local CLIP or SigLIP folder '
                                '(e.g. written by save_pretrained)')
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(dtype).eval()
    wrapped = image_text_model(model, path=str(folder))  # refuses a model that is not two-tower, before the files
    wrapped.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    try:
        wrapped.processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        pass  # no image processor: images must then be given as preprocessed tensors
    return wrapped


@dataclass
class ImageTextExplanation:
    """BiLRP of the similarity of an image and a caption; its fields:

    Parameters
    ----------
    relevance : torch.Tensor
        Patch-by-token relevance ``(P, L)``: patch ``p`` (row-major on :attr:`grid`) and caption token ``t``;
        ``relevance.sum()`` approximates :attr:`similarity`.
    tokens : list of str
        The caption's tokens (special tokens included).
    grid : tuple of int
        Patch grid ``(rows, columns)`` of the image (the model's patch size).
    patch_size : tuple of int
        Patch size ``(height, width)`` in pixels.
    image : torch.Tensor
        The image for display ``(C, H, W)``, values in ``[0, 1]``.
    similarity : float
        The explained cosine similarity.
    result : BiLRPResult
        The engine's result (factors of both towers, marginals at pixel and token resolution when computed).
    caption : str
        The caption (empty when token ids were given).
    """
    relevance: torch.Tensor
    tokens: list
    grid: tuple
    patch_size: tuple
    image: torch.Tensor
    similarity: float
    result: BiLRPResult
    caption: str = ''

    @property
    def total(self) -> float:
        """``sum R``."""
        return float(self.relevance.sum())

    def token_heatmaps(self) -> torch.Tensor:
        """Relevance of each token over the image patches, ``(L, rows, columns)``."""
        return self.relevance.T.reshape(len(self.tokens), *self.grid)

    def token_heatmap(self, token: int) -> torch.Tensor:
        """Relevance of token ``token`` (its position) over the patches, ``(rows, columns)``."""
        if not -len(self.tokens) <= token < len(self.tokens):
            raise IndexError(f'token {token} out of range for {len(self.tokens)} tokens')
        return self.token_heatmaps()[token]

    def patch_marginal(self) -> torch.Tensor:
        """Relevance of each patch summed over the tokens, ``(rows, columns)``."""
        return self.relevance.sum(dim=1).reshape(self.grid)

    def token_marginal(self) -> torch.Tensor:
        """Relevance of each token summed over the patches, ``(L,)``."""
        return self.relevance.sum(dim=0)

    def pixel_marginal(self) -> Optional[torch.Tensor]:
        """The exact image marginal at pixel resolution ``(H, W)`` (channels summed), when computed."""
        marginal = self.result.marginal_a
        return None if marginal is None else marginal[0].sum(dim=0)

    def top_pairs(self, k: int = 10, by: str = 'abs') -> list:
        """The ``k`` strongest patch-token pairs as ``(patch, (row, column), token index, token, relevance)``,
        ranked ``by`` 'abs' or 'value'."""
        flat = self.relevance.reshape(-1)
        keys = {'abs': flat.abs(), 'value': flat}
        if by not in keys:
            raise ValueError(f"by must be 'abs' or 'value', got {by!r}")
        width = self.relevance.shape[1]
        index = keys[by].topk(max(0, min(int(k), flat.numel()))).indices.tolist()
        return [(i // width, divmod(i // width, self.grid[1]), i % width, self.tokens[i % width], float(flat[i]))
                for i in index]

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the explanation to one ``.npz`` file (the engine's result with the image, tokens and grid)."""
        extras = {'image': self.image, 'tokens': list(self.tokens), 'grid': list(self.grid),
                  'patch_size': list(self.patch_size), 'caption': self.caption}
        result = BiLRPResult(self.result.relevance, self.result.similarity, self.result.factors_a,
                             self.result.factors_b, self.result.marginal_a, self.result.marginal_b,
                             {**self.result.extras, **extras}, dict(self.result.metadata))
        return result.save(path, metadata={'kind': 'ImageTextExplanation'})

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> ImageTextExplanation:
        """Read an explanation written by :meth:`save`."""
        result = BiLRPResult.load(path)
        extras = result.extras
        missing = [key for key in ('image', 'tokens', 'grid', 'patch_size') if key not in extras]
        if missing:
            raise ValueError(f'{str(path)!r} is not an ImageTextExplanation (no {missing} in its extras)')
        return cls(result.relevance[0], list(extras['tokens']), tuple(extras['grid']), tuple(extras['patch_size']),
                   extras['image'], float(result.similarity[0]), result, str(extras.get('caption', '')))


def explain_image_text(model: ImageTextModel, image, caption: Union[str, torch.Tensor], composite=None,
                       composite_b=None, family: str = DEFAULT_FAMILY, bilrp: Optional[BiLRP] = None,
                       attention_mask: Optional[torch.Tensor] = None, marginals: bool = True) -> ImageTextExplanation:
    """Explain the cosine similarity of an image and a caption, patch by token, with BiLRP.

    Parameters
    ----------
    model : ImageTextModel
        From :func:`load_image_text_model` or :func:`image_text_model`.
    image : torch.Tensor or PIL.Image.Image or numpy.ndarray
        A preprocessed image tensor ``(C, H, W)`` / ``(1, C, H, W)``, or an image for the model's processor.
    caption : str or torch.Tensor
        The caption, or its token ids ``(1, L)`` (then ``attention_mask`` may be given; default: up to the end-of-text
        token for CLIP and OpenCLIP, all positions for SigLIP).
    composite, composite_b : zennit.core.Composite, optional
        Rules of the image and the text tower; default ``TransformerLRP(family)`` for each.
    family : {'conservative', 'attnlrp'}
        The rule family of the default composites.
    bilrp : BiLRP, optional
        An engine to reuse (``model.bilrp(...)``); overrides the composites.
    marginals : bool
        Also compute the exact marginals (pixel resolution for the image, per token for the caption).

    Returns
    -------
    ImageTextExplanation
    """
    pixels, tokens_in, display, tokens = model.inputs(image, caption, attention_mask)
    engine = model.bilrp(composite, composite_b, family) if bilrp is None else bilrp
    height, width = pixels.shape[2:]
    result = engine.explain(pixels, tokens_in, pooling=model.image.patch_pooling(height, width), pooling_b=None,
                            marginals=marginals)
    return ImageTextExplanation(result.relevance[0].detach(), tokens, model.image.grid(height, width),
                                model.image.patch_size, display, float(result.similarity[0]), result,
                                caption if isinstance(caption, str) else '')
