r"""Dataset-scale object-versus-context studies: several models explained on the same pairs, saved, summarized.

:class:`ContextStudy` takes named, configured :class:`~zennit_bilrp.core.engine.BiLRP` explainers (e.g. a model and
the same model with an alignment head) and a source of pairs with object masks — a map-style ``Dataset`` or a
``DataLoader`` whose items are ``(x_a, x_b, mask_a, mask_b)`` (as :class:`~zennit_bilrp.models.synthetic.SyntheticPairs`
and :class:`PairFolder` give) — and writes one CSV row per pair and model with the measures of
:func:`~zennit_bilrp.analysis.context.context_analysis`.

- **Resumable**: rows are appended after every batch; a rerun skips pairs that already have rows for every model
  in any result file of the output directory.
- **Shardable**: rank ``r`` of ``w`` takes the pairs with ``index % w == r`` and writes
  ``pairs.rank{r}-of{w}.csv``. Rank and world size come from the arguments, else from an initialized
  ``torch.distributed`` process group, else from the ``RANK``/``WORLD_SIZE`` variables that ``torchrun`` sets.
  :func:`merge_results` then writes ``pairs.csv`` with one row per pair and model.
- **Summary** (:func:`summarize`): per model and measure the mean with a bootstrap confidence interval; per
  model against a baseline the mean paired difference over common pairs with a percentile-bootstrap CI
  (pairs resampled), the Wilcoxon signed-rank test and the paired t-test (scipy).

Command line (merging and summarizing; running needs models, see ``examples/alignment_study.py``)::

    zennit-bilrp study merge OUT_DIR
    zennit-bilrp study summarize OUT_DIR --baseline base
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import warnings
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from scipy import stats
from tqdm.auto import tqdm

from ..core.checks import model_tensor
from ..core.engine import BiLRP
from ..core.results import AMPLIFICATION_LIMIT, BiLRPResult, ConservationWarning, amplification
from .context import KINDS, context_analysis

__all__ = ['ContextStudy', 'PairFolder', 'write_pair_folder', 'shard_info', 'read_results', 'merge_results',
           'load_result', 'summarize', 'write_summary', 'DEFAULT_METRICS']

#: measures summarized by default
DEFAULT_METRICS = ('marginal_context_a', 'marginal_context_b', 'context_positive', 'context_abs',
                   'context_context_positive', 'object_object_positive', 'context_signed')
_KEY_COLUMNS = ('pair', 'index', 'model')
_RESULT_GLOB = 'pairs*.csv'


def shard_info(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple:
    """``(rank, world_size)``: explicit, else ``torch.distributed``, else ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if rank is None or world_size is None:
        raise ValueError('give both rank and world_size, or neither')
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f'need 0 <= rank < world_size, got rank={rank}, world_size={world_size}')
    return int(rank), int(world_size)


def read_results(path_or_dir: str) -> list:
    """Rows (dicts; numbers as float, ``index`` as int) of one result CSV or of all ``pairs*.csv`` in a directory.

    Incomplete lines (an interrupted write) are skipped. Rows are de-duplicated by ``(pair, model)`` (first kept).
    """
    if os.path.isdir(path_or_dir):
        merged = os.path.join(path_or_dir, 'pairs.csv')
        paths = sorted(p for p in glob.glob(os.path.join(path_or_dir, _RESULT_GLOB)) if p != merged)
        paths = ([merged] if os.path.isfile(merged) else []) + paths
    else:
        paths = [path_or_dir]
    rows, seen = [], set()
    for path in paths:
        with open(path, newline='') as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                continue
            for values in reader:
                if len(values) != len(header) or any(v == '' for v in values[:3]):
                    continue
                row = dict(zip(header, values))
                key = (row['pair'], row['model'])
                if key in seen:
                    continue
                seen.add(key)
                rows.append(_parse_row(row))
    return rows


def _parse_row(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if key in ('pair', 'model'):
            out[key] = value
        elif key == 'index':
            out[key] = int(value)
        else:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def _write_rows(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    new = not os.path.isfile(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, 'rb') as handle:  # an interrupted run may have left a partial last line
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b'\n':
                with open(path, 'a') as fix:
                    fix.write('\n')
        with open(path, newline='') as handle:
            header = next(csv.reader(handle), [])
        if list(header) != list(columns):
            raise ValueError(f'{path} has columns {header}, but this study writes {list(columns)}; use another '
                             'output directory (or the same models and kinds as before)')
    with open(path, 'a', newline='') as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(row[c]) for c in columns])
        handle.flush()
        os.fsync(handle.fileno())


def _format(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def merge_results(out_dir: str, filename: str = 'pairs.csv') -> str:
    """Merge the per-rank files of ``out_dir`` into ``out_dir/filename`` (one row per pair and model, sorted)."""
    rows = read_results(out_dir)
    if not rows:
        raise FileNotFoundError(f'no result rows in {out_dir!r} (expected {_RESULT_GLOB} files)')
    columns = list(rows[0].keys())
    rows.sort(key=lambda r: (r['index'], r['pair'], r['model']))
    path = os.path.join(out_dir, filename)
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(row.get(c, '')) for c in columns])
    os.replace(tmp, path)
    return path


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        return index, self.dataset[index]


def _file_stem(pair: str) -> str:
    """A pair name as a file name (characters other than letters, digits, ``_ . + -`` become ``_``)."""
    return re.sub(r'[^\w.+-]', '_', pair) or '_'


def load_result(out_dir: str, model: str, pair: str) -> BiLRPResult:
    """The explanation of ``pair`` by ``model`` kept by a :class:`ContextStudy` run with ``save_results=True``."""
    path = os.path.join(out_dir, 'results', model, f'{_file_stem(str(pair))}.npz')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no saved result for model {model!r} and pair {pair!r} ({path}); run the study with '
                                'save_results=True')
    return BiLRPResult.load(path)


def _pair_name(dataset, index: int) -> str:
    if hasattr(dataset, 'pair_id'):
        return str(dataset.pair_id(index))
    return str(index)


class PairFolder(torch.utils.data.Dataset):
    """Image pairs with object masks from a folder.

    Layout: ``root/pairs.csv`` with columns ``image_a, image_b, mask_a, mask_b`` (paths relative to ``root``;
    optional column ``id``). Images are RGB files (PNG/JPEG); masks are image files whose non-zero pixels mark
    the object. Items are ``(x_a, x_b, mask_a, mask_b)``: float32 ``(3, S, S)`` in [0, 1] and bool ``(S, S)``.

    Parameters
    ----------
    root : str
        The folder.
    size : int or tuple of int, optional
        Resize images (bilinear) and masks (nearest) to this ``(height, width)``; default keep (all images must
        then have one size to be batched).
    transform : callable, optional
        Applied to each image tensor after resizing (e.g. ImageNet normalization).
    """

    def __init__(self, root: str, size: Union[None, int, Sequence[int]] = None, transform=None):
        index = os.path.join(root, 'pairs.csv')
        if not os.path.isfile(index):
            raise FileNotFoundError(f'{root!r} has no pairs.csv (columns image_a, image_b, mask_a, mask_b)')
        with open(index, newline='') as handle:
            self.records = list(csv.DictReader(handle))
        missing = {'image_a', 'image_b', 'mask_a', 'mask_b'} - set(self.records[0] if self.records else {})
        if missing:
            raise ValueError(f'{index}: missing columns {sorted(missing)}')
        self.root = root
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def pair_id(self, index: int) -> str:
        """The ``id`` column, or the index."""
        return self.records[index].get('id') or str(index)

    def _load(self, name: str, mask: bool) -> torch.Tensor:
        image = Image.open(os.path.join(self.root, name))
        image = image.convert('L' if mask else 'RGB')
        if self.size is not None:
            image = image.resize(self.size[::-1], Image.NEAREST if mask else Image.BILINEAR)
        array = np.asarray(image)
        if mask:
            return torch.from_numpy(array > 0)
        tensor = torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return self.transform(tensor) if self.transform is not None else tensor

    def __getitem__(self, index: int):
        record = self.records[index]
        return (self._load(record['image_a'], False), self._load(record['image_b'], False),
                self._load(record['mask_a'], True), self._load(record['mask_b'], True))


def write_pair_folder(pairs, root: str) -> str:
    """Write pairs ``(x_a, x_b, mask_a, mask_b)`` (e.g. :class:`~zennit_bilrp.models.synthetic.SyntheticPairs`) as
    PNG files
    with a ``pairs.csv`` readable by :class:`PairFolder` (images quantized to 8 bits). Returns ``root``."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'pairs.csv'), 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['id', 'image_a', 'image_b', 'mask_a', 'mask_b'])
        for i in range(len(pairs)):
            x_a, x_b, m_a, m_b = pairs[i]
            names = [f'{i:05d}_a.png', f'{i:05d}_b.png', f'{i:05d}_a_mask.png', f'{i:05d}_b_mask.png']
            for name, x in zip(names[:2], (x_a, x_b)):
                array = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(array).save(os.path.join(root, name))
            for name, m in zip(names[2:], (m_a, m_b)):
                Image.fromarray(m.numpy().astype(np.uint8) * 255).save(os.path.join(root, name))
            writer.writerow([f'pair{i:05d}', *names])
    return root


class ContextStudy:
    """Object/context analysis of several models on the same pairs.

    Parameters
    ----------
    explainers : mapping of str to BiLRP
        Named, configured explainers (model, composite, similarity, head), e.g.
        ``{'base': BiLRP(model, ...), 'aligned': BiLRP(AlignedModel(model, transform), ...)}``.
    pooling : int or Pooling, optional
        Pooling of the pairwise relevance (``None``: per pixel, exact shares; coarser patches for big images).
    kinds : sequence of str
        Share variants (see :mod:`zennit_bilrp.analysis.context`).
    batch_size : int
        Pairs per batch when the source is a ``Dataset``.
    progress : bool
        tqdm bar over pairs (one bar; the explainers' own bars, if enabled, nest below it and vanish when done).
    save_results : bool
        Also keep every explanation: ``OUT_DIR/results/<model>/<pair>.npz`` per pair and model
        (:meth:`BiLRPResult.save <zennit_bilrp.core.results.BiLRPResult.save>`: pooled relevance, patch grids,
        factors, exact marginals; read with :func:`load_result`).

    Examples
    --------
    >>> study = ContextStudy({'base': BiLRP(model, composite=c), 'aligned': BiLRP(aligned, composite=c2)})
    >>> path = study.run(pairs, 'out/study')            # resumable; rank/world size from torchrun if set
    >>> summary = summarize(read_results('out/study'), baseline='base')
    """

    def __init__(self, explainers: Mapping[str, BiLRP], pooling=None, kinds: Sequence[str] = KINDS,
                 batch_size: int = 8, progress: bool = True, save_results: bool = False):
        if not explainers:
            raise ValueError('ContextStudy needs at least one named explainer')
        for name, explainer in explainers.items():
            if not isinstance(explainer, BiLRP):
                raise TypeError(f'explainer {name!r} must be a BiLRP instance, got {type(explainer).__name__}')
            if not re.fullmatch(r'[\w.+-]+', name):
                raise ValueError(f'model name {name!r} must be a plain word (letters, digits, _ . + -)')
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f'unknown kind {kind!r}; choose from {KINDS}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        self.explainers = dict(explainers)
        self.pooling = pooling
        self.kinds = tuple(kinds)
        self.batch_size = batch_size
        self.progress = progress
        self.save_results = save_results
        #: the explanations of the last batch analyzed, per model (kept only with ``save_results``)
        self.last_results: dict = {}
        #: per model: [pairs whose |sum R| exceeded AMPLIFICATION_LIMIT * |y|, pairs analyzed, largest ratio]
        self.amplified = {name: [0, 0, 0.0] for name in self.explainers}

    def columns(self) -> list:
        """CSV columns written by :meth:`run`."""
        measures = []
        for kind in self.kinds:
            measures += [f'{block}_{kind}' for block in ('object_object', 'object_context', 'context_object',
                                                         'context_context', 'context', 'total')]
        return list(_KEY_COLUMNS) + ['similarity', 'delta'] + measures + ['marginal_context_a', 'marginal_context_b']

    def analyze(self, x_a: torch.Tensor, x_b: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> dict:
        """Measures of one batch for every model: ``{model: {column: (B,) tensor}}``.

        Each explainer gets the batch in its model's dtype and on its device; pairs whose explanation amplifies
        the similarity (:func:`~zennit_bilrp.core.results.amplification` above
        :data:`~zennit_bilrp.core.results.AMPLIFICATION_LIMIT`) are counted in :attr:`amplified` instead of
        warned about one batch at a time.
        """
        out = {}
        for name, explainer in self.explainers.items():
            reference = model_tensor(explainer.model)
            dtype = reference.dtype if reference is not None and reference.is_floating_point() else x_a.dtype
            device = reference.device if reference is not None else x_a.device
            with warnings.catch_warnings():  # counted per model and reported once by run()
                warnings.simplefilter('ignore', ConservationWarning)
                result = explainer.explain(x_a.to(device, dtype), x_b.to(device, dtype), pooling=self.pooling,
                                           marginals=True)
            self._count_amplified(name, amplification(result.relevance.sum(dim=(1, 2)), result.similarity).cpu())
            if self.save_results:
                self.last_results[name] = result.cpu()
            out[name] = {k: v.cpu() for k, v in context_analysis(result, mask_a.to(device), mask_b.to(device),
                                                                 self.kinds).items()}
        return out

    def run(self, pairs, out_dir: str, rank: Optional[int] = None, world_size: Optional[int] = None,
            limit: Optional[int] = None) -> str:
        """Analyze all pending pairs of this shard and append the rows to this rank's CSV.

        Parameters
        ----------
        pairs : Dataset or DataLoader
            Map-style source of ``(x_a, x_b, mask_a, mask_b)`` items. A ``DataLoader`` contributes its dataset,
            batch size, workers and collate function; pairs are visited in index order (its sampler is ignored so
            that shards and resumption are well defined).
        out_dir : str
            Output directory (created).
        rank, world_size : int, optional
            Shard of this process (default: see :func:`shard_info`).
        limit : int, optional
            Use only the first ``limit`` pairs of the source.

        Returns
        -------
        str
            Path of this rank's CSV file.
        """
        rank, world_size = shard_info(rank, world_size)
        dataset, loader_args, user_collate = self._source(pairs)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f'pairs.rank{rank}-of{world_size}.csv')
        total = len(dataset) if limit is None else min(limit, len(dataset))
        mine = [i for i in range(total) if i % world_size == rank]
        done = self._done(out_dir)
        pending = [i for i in mine if _pair_name(dataset, i) not in done]
        columns = self.columns()
        if not pending:
            if not os.path.isfile(path):
                _write_rows(path, [], columns)
            return path

        def collate(batch):
            return torch.tensor([index for index, _ in batch]), user_collate([item for _, item in batch])

        loader = torch.utils.data.DataLoader(_Indexed(dataset, pending), shuffle=False, collate_fn=collate,
                                             **loader_args)
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f'pairs (rank {rank}/{world_size})',
                   disable=not self.progress, unit='pair', leave=True, dynamic_ncols=True)
        for indices, batch in loader:
            measures = self.analyze(*_unpack(batch))
            if self.save_results:
                self._save_batch(out_dir, dataset, indices.tolist())
            _write_rows(path, _batch_rows(dataset, indices.tolist(), measures, columns), columns)
            bar.update(len(indices))
        bar.close()
        self._warn_amplified()
        return path

    def _save_batch(self, out_dir: str, dataset, indices: Sequence[int]) -> None:
        """Write the last batch's explanations, one NPZ file per pair and model (before its CSV rows, so that a
        resumed run never lacks the file of a pair it skips)."""
        for name, result in self.last_results.items():
            folder = os.path.join(out_dir, 'results', name)
            for row, index in enumerate(indices):
                pair = _pair_name(dataset, index)
                result[row].save(os.path.join(folder, f'{_file_stem(pair)}.npz'),
                                 metadata={'model': name, 'pair': pair, 'pooling_arg': repr(self.pooling)})
        self.last_results = {}

    def _source(self, pairs) -> tuple:
        """``(dataset, loader arguments, collate function)`` of a ``Dataset`` or ``DataLoader`` source."""
        if isinstance(pairs, torch.utils.data.DataLoader):
            dataset = pairs.dataset
            loader_args = {'batch_size': pairs.batch_size or 1, 'num_workers': pairs.num_workers}
            user_collate = pairs.collate_fn
        else:
            dataset, loader_args = pairs, {'batch_size': self.batch_size}
            user_collate = torch.utils.data.default_collate
        if not hasattr(dataset, '__getitem__') or not hasattr(dataset, '__len__'):
            raise TypeError('pairs must be a map-style Dataset (with __len__ and __getitem__) or a DataLoader over one')
        return dataset, loader_args, user_collate

    def _count_amplified(self, name: str, ratio: torch.Tensor) -> None:
        """Add a batch's amplification ratios ``|sum R| / |y|`` to the counts of model ``name``."""
        count = self.amplified.setdefault(name, [0, 0, 0.0])
        count[0] += int((ratio > AMPLIFICATION_LIMIT).sum())
        count[1] += ratio.numel()
        count[2] = max(count[2], float(ratio.max()))

    def _warn_amplified(self) -> None:
        """One :class:`~zennit_bilrp.core.results.ConservationWarning` per model with amplified pairs."""
        for model, (amplified, analyzed, worst) in self.amplified.items():
            if amplified:
                warnings.warn(
                    f'{model!r}: |sum R| exceeded {AMPLIFICATION_LIMIT:g} |y| in {amplified} of {analyzed} pairs '
                    f'(up to {worst:.3g} times); the delta column holds y - sum R. With gamma/LRP-0 rules and '
                    "zero_params=['bias'] this is unstable relevance; with a kept bias (e.g. an alignment head) it "
                    'is the bias terms, see zennit_bilrp.analysis.alignment', ConservationWarning, stacklevel=3)

    def _done(self, out_dir: str) -> set:
        """Pairs with rows for every model in any result file of ``out_dir``."""
        models = {}
        for row in read_results(out_dir) if os.path.isdir(out_dir) else []:
            models.setdefault(row['pair'], set()).add(row['model'])
        wanted = set(self.explainers)
        return {pair for pair, have in models.items() if wanted <= have}


def _batch_rows(dataset, indices: Sequence[int], measures: Mapping[str, dict], columns: Sequence[str]) -> list:
    """One CSV row (a dict over ``columns``) per pair of a batch and model."""
    rows = []
    for j, index in enumerate(indices):
        for model, values in measures.items():
            row = {'pair': _pair_name(dataset, index), 'index': index, 'model': model}
            row.update({k: float(values[k][j]) for k in columns[len(_KEY_COLUMNS):]})
            rows.append(row)
    return rows


def _unpack(batch):
    if isinstance(batch, Mapping):
        return batch['x_a'], batch['x_b'], batch['mask_a'], batch['mask_b']
    if len(batch) < 4:
        raise ValueError('each pair must provide (x_a, x_b, mask_a, mask_b)')
    return batch[0], batch[1], batch[2], batch[3]


def _bootstrap_mean_ci(values: np.ndarray, n_boot: int, confidence: float, rng: np.random.Generator) -> tuple:
    if len(values) == 0:
        return math.nan, math.nan
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(rows: Iterable[dict], metrics: Sequence[str] = DEFAULT_METRICS, baseline: Optional[str] = None,
              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> list:
    r"""Summarize per-pair rows: means per model and paired differences against a baseline.

    Parameters
    ----------
    rows : iterable of dict
        Rows as written by :meth:`ContextStudy.run` (see :func:`read_results`).
    metrics : sequence of str
        Columns to summarize (missing ones are skipped).
    baseline : str, optional
        Model the others are compared to (default: the first model in the rows).
    n_boot : int
        Bootstrap resamples (pairs drawn with replacement).
    confidence : float
        Level of the percentile intervals.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    list of dict
        One record per model and metric (``kind='mean'``: ``mean``, ``ci_low``, ``ci_high``, ``n``) and per
        non-baseline model and metric (``kind='paired_difference'``: mean of ``model - baseline`` over pairs that
        both have, its bootstrap CI, ``wilcoxon_p`` (two-sided signed-rank test), ``ttest_p`` (paired t-test),
        ``fraction_positive`` (pairs with a positive difference)). NaN values are dropped per metric.
    """
    rows = list(rows)
    if not rows:
        raise ValueError('summarize: no rows')
    models = list(dict.fromkeys(r['model'] for r in rows))
    baseline = models[0] if baseline is None else baseline
    if baseline not in models:
        raise ValueError(f'baseline {baseline!r} not among the models {models}')
    table = {m: {r['pair']: r for r in rows if r['model'] == m} for m in models}
    rng = np.random.default_rng(seed)
    out = []
    metrics = [m for m in metrics if m in rows[0]]
    for metric in metrics:
        for model in models:
            values = np.array([r[metric] for r in table[model].values()], dtype=float)
            values = values[np.isfinite(values)]
            low, high = _bootstrap_mean_ci(values, n_boot, confidence, rng)
            out.append({'kind': 'mean', 'metric': metric, 'model': model, 'n': len(values),
                        'mean': float(values.mean()) if len(values) else math.nan, 'ci_low': low, 'ci_high': high})
        out.extend(_paired_difference(table, model, baseline, metric, (n_boot, confidence, rng))
                   for model in models if model != baseline)
    return out


def _paired_difference(table: dict, model: str, baseline: str, metric: str, bootstrap: tuple) -> dict:
    """The ``paired_difference`` record of :func:`summarize`: ``model - baseline`` over the pairs both have, with
    its bootstrap interval (``bootstrap = (n_boot, confidence, rng)``) and the two tests."""
    common = [p for p in table[model] if p in table[baseline]]
    diff = np.array([table[model][p][metric] - table[baseline][p][metric] for p in common], dtype=float)
    diff = diff[np.isfinite(diff)]
    low, high = _bootstrap_mean_ci(diff, *bootstrap)
    record = {'kind': 'paired_difference', 'metric': metric, 'model': f'{model} - {baseline}', 'n': len(diff),
              'mean': float(diff.mean()) if len(diff) else math.nan, 'ci_low': low, 'ci_high': high,
              'wilcoxon_p': math.nan, 'ttest_p': math.nan,
              'fraction_positive': float((diff > 0).mean()) if len(diff) else math.nan}
    if len(diff) >= 2 and np.any(diff != 0):
        record['wilcoxon_p'] = float(stats.wilcoxon(diff).pvalue)
        if np.ptp(diff) <= 1e-12 * np.abs(diff).max():  # constant difference: the t statistic is infinite
            record['ttest_p'] = 0.0
        else:
            record['ttest_p'] = float(stats.ttest_1samp(diff, 0.0).pvalue)
    return record


def write_summary(summary: Sequence[dict], path: str) -> str:
    """Write :func:`summarize` records to ``path`` (``.csv`` or ``.json``)."""
    if path.endswith('.json'):
        with open(path, 'w') as handle:
            json.dump(list(summary), handle, indent=2)
        return path
    columns = ['kind', 'metric', 'model', 'n', 'mean', 'ci_low', 'ci_high', 'wilcoxon_p', 'ttest_p',
               'fraction_positive']
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for record in summary:
            writer.writerow([_format(record.get(c, '')) for c in columns])
    return path
