"""Speed and accuracy of BiLRP: the exact engine (which takes the cheaper of its two exact paths: one LRP pass per
embedding unit, or one second-order pass per patch) against the h-pass unit-major path, the naive per-unit Zennit
loop, the floor of min(h, P) plain vector-Jacobian products of the same network, and every cheaper estimator at
several budgets with its error against exact, measured side by side in one run.

Usage::

    python benchmarks/speed.py                                   # demo model, CPU (a few minutes on 2 cores)
    python benchmarks/speed.py --model resnet18 --size 64 64     # torchvision ResNet-18, random weights
    python benchmarks/speed.py --model resnet50 --size 224 224 --patch 32 --unit-subset 32 --naive-units 8 \
        --no-estimators --threads 2                              # the headline comparison
    python benchmarks/speed.py --model resnet50 --device cuda    # on a GPU (see benchmarks/gpu.sh)

Writes ``results.csv`` (one row per measurement), ``results.json`` (settings, headline ratios and targets) and
``error_vs_cost.png`` to ``--out`` (default ``out/speed/<model>``) and prints a table. Times are minima over repeated
runs (robust on a shared machine); ratios are to the exact engine measured in the same run; paths too slow to run in
full (the h-pass paths on large h) are timed on a unit subset and extrapolated linearly to h, which the row's note
says. Errors of random estimators are means over ``--seeds``. Peak memory is the peak CUDA allocation, or on CPU
the peak increase of the process' resident memory sampled every millisecond (a coarse measure).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from zennit_bilrp import BiLRP, Pooling
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.composites import BiLRPGamma, DepthGamma
from zennit_bilrp.scale.approximations import approximate, explain_at_layer
from zennit_bilrp.scale.metrics import compare


class PeakMemory:
    """Peak memory increase during a block: CUDA allocator peak, or sampled resident set size on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open('/proc/self/statm') as handle:
            return int(handle.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = self.top = self._rss()
        self.running = True

        def sample():
            while self.running:
                self.top = max(self.top, self._rss())
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *args):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, self._rss()) - self.base
        return False


#: run each timed function once before timing it (``--no-warmup`` turns it off for the heavy models)
WARMUP = [True]


def timed(fn, device, repeats: int):
    """Minimum wall time over ``repeats`` runs after one warm-up (the machine may be shared: interference only adds
    time, so the minimum is the robust estimate), the largest peak memory, and the last result."""
    if WARMUP[0]:
        fn()
    times, result, peak = [], None, 0
    for _ in range(repeats):
        with PeakMemory(device) as memory:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = max(peak, memory.peak)
    return min(times), peak, result


def build(name: str, size, device, dtype, pairs: int, seed: int = 0):
    """Model, composite factory, inputs, similarity, head, intermediate layers and their patch sizes."""
    torch.manual_seed(seed)
    info = {}
    if name == 'demo':
        from zennit_bilrp.models.demo import build_demo_encoder, demo_composite, load_demo_pair, load_second_pair
        try:
            from zennit_bilrp.models.demo import load_demo_model
            model = load_demo_model()
            info['weights'] = 'trained (shipped)'
        except (FileNotFoundError, ImportError, ValueError, RuntimeError) as error:
            model = build_demo_encoder().eval()
            info['weights'] = f'random init ({type(error).__name__})'
        size = tuple(size or (64, 96))
        left, right = load_demo_pair(size)
        x_a, x_b = [left], [right]
        if pairs > 1:
            second = load_second_pair(size)
            x_a.append(second[0])
            x_b.append(second[1])
        while len(x_a) < pairs:
            x_a.append(torch.rand_like(left))
            x_b.append(torch.rand_like(left))
        x_a, x_b = torch.cat(x_a[:pairs]), torch.cat(x_b[:pairs])

        def make_composite():
            return demo_composite(model)
        similarity, head = 'cosine', 'none'
        stride = {'stages.0': 2, 'stages.1': 4, 'stages.2': 8}
    elif name == 'smallresnet':
        from zennit_bilrp.models.small_resnet import SmallResNet
        model = SmallResNet(widths=(16, 32, 64)).eval()
        info['weights'] = 'random init'
        size = tuple(size or (32, 32))
        stride = {'stages.0': 1, 'stages.1': 2, 'stages.2': 4}
    elif name == 'vgg16':
        import torchvision
        model = FlatFeatures(torchvision.models.vgg16().features).eval()
        info['weights'] = 'random init (no downloads)'
        size = tuple(size or (64, 64))
        stride = {}
    elif name in ('resnet18', 'resnet50'):
        import torchvision
        model = getattr(torchvision.models, name)()
        model.fc = torch.nn.Identity()
        model.eval()
        info['weights'] = 'random init (no downloads)'
        size = tuple(size or (64, 64))
        stride = {'layer2': 8, 'layer3': 16, 'layer4': 32}
    else:
        raise ValueError(f'unknown model {name!r}')
    if name == 'vgg16':  # the BiLRP paper's setting: VGG-16 conv features, flattened, the authors' rules
        x_a, x_b = torch.rand(pairs, 3, *size), torch.rand(pairs, 3, *size)

        def make_composite():
            return BiLRPGamma(low=0.0, high=1.0)
        similarity, head = 'cosine', 'none'
    elif name != 'demo':  # random-weight models: inputs in [0, 1], the depth-gamma preset, biases out of the rules
        x_a, x_b = torch.rand(pairs, 3, *size), torch.rand(pairs, 3, *size)

        def make_composite():
            return DepthGamma(zero_params=['bias'], canonizers=canonizers_for(model))
        similarity, head = 'cosine', 'none'
    model = model.to(device=device, dtype=dtype)
    return model, make_composite, x_a.to(device, dtype), x_b.to(device, dtype), similarity, head, stride, info, size


class FlatFeatures(torch.nn.Module):
    """A VGG ``features`` block whose output is flattened: the embedding of the BiLRP paper's VGG-16 setting
    (``h = 512 * (H / 32) * (W / 32)``, 25088 at 224 x 224)."""

    def __init__(self, features: torch.nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def naive_loop(model, composite, x, h: int, grid, units: int):
    """What a Zennit user writes today: one ``zennit.attribution.Gradient`` call per embedding unit."""
    from zennit.attribution import Gradient

    rows = []
    with Gradient(model=model, composite=composite) as attributor:
        for unit in range(units):
            def seed(output, unit=unit):
                mask = torch.zeros_like(output)
                mask[:, unit] = 1.0
                return output * mask
            _, relevance = attributor(x, seed)
            rows.append(Pooling.apply(relevance[None], grid, 2)[0])
    return torch.stack(rows, dim=1)  # (N, units, P)


def plain_vjps(model, x, count: int, chunk: int, grid):
    """The floor: ``count`` plain vector-Jacobian products of the same network (no LRP rules), ``chunk`` seeds per
    batched pass (``is_grads_batched``; ``chunk=1``: one ordinary backward pass each), pooled like the engine's.
    The seeds are the first ``count`` output units (any seeds cost the same)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    count = min(count, out.shape[1])
    eye = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)
    pooled = []
    for start in range(0, count, chunk):
        seeds = eye[start:min(start + chunk, count), None, :] * out.detach()[None]
        if seeds.shape[0] > 1:
            grad, = torch.autograd.grad(out, x, seeds, retain_graph=True, is_grads_batched=True)
        else:
            grad = torch.autograd.grad(out, x, seeds[0], retain_graph=True)[0][None]
        pooled.append(Pooling.apply(grad, grid, 2))
    return torch.cat(pooled)


def plain_vjps_vmap(model, x, count: int, grid):
    """The floor via ``torch.func.vmap(vjp)`` over ``count`` seeds at once."""
    from torch.func import vjp, vmap

    out, pullback = vjp(model, x.detach())
    count = min(count, out.shape[1])
    seeds = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)[:count, None, :] * out.detach()[None]
    grad, = vmap(pullback)(seeds)
    return Pooling.apply(grad, grid, 2)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='demo', choices=['demo', 'smallresnet', 'resnet18', 'resnet50', 'vgg16'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    parser.add_argument('--size', type=int, nargs=2, default=None, help='input height and width')
    parser.add_argument('--pairs', type=int, default=1, help='number of pairs explained at once')
    parser.add_argument('--patch', type=int, default=8, help='patch size of the pooled relevance')
    parser.add_argument('--method', default='auto', help="the exact engine's method (default 'auto')")
    parser.add_argument('--memory-budget', type=int, default=1 << 30, help="the engines' memory_budget in bytes")
    parser.add_argument('--unit-subset', type=int, default=None,
                        help='units timed on the h-pass unit-major path, extrapolated to h (default: all up to 512)')
    parser.add_argument('--fractions', type=float, nargs='+', default=[1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2],
                        help='budgets k as fractions of h')
    parser.add_argument('--seeds', type=int, default=3, help='seeds per random estimator')
    parser.add_argument('--repeats', type=int, default=3, help='timed repetitions of exact/floor/layers (minimum)')
    parser.add_argument('--repeats-cheap', type=int, default=2, help='timed repetitions per seed of the estimators')
    parser.add_argument('--naive-units', type=int, default=None,
                        help='units timed in the naive loop (the time is extrapolated to h; default all)')
    parser.add_argument('--chunks', type=int, nargs='*', default=[1, 16], help='extra fixed chunk sizes to time')
    parser.add_argument('--topk', type=int, default=20)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--no-estimators', action='store_true',
                        help='skip the estimators, intermediate layers and reduced precisions (the heavy models)')
    parser.add_argument('--no-hybrid', action='store_true', help='skip the single-pair hybrid path')
    parser.add_argument('--no-warmup', action='store_true', help='time without a warm-up run (heavy models)')
    parser.add_argument('--no-retime', action='store_true', help='skip re-timing exact and floor at the end')
    parser.add_argument('--out', default=None)
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--replot', action='store_true', help='only redraw the figure from the saved CSV/JSON')
    args = parser.parse_args(argv)
    if not args.replot and torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda requested but CUDA is not available')
    return args


def replot(out_dir: Path):
    """Redraw the figure from the saved ``results.csv`` and ``results.json``."""
    with open(out_dir / 'results.csv') as handle:
        rows = [{k: (v if k in ('method', 'note') else float(v)) for k, v in row.items() if v != ''}
                for row in csv.DictReader(handle)]
    summary = json.loads((out_dir / 'results.json').read_text())
    plot(rows, summary, out_dir / 'error_vs_cost.png')
    print(f'wrote {out_dir}/error_vs_cost.png')
    return rows, summary


class Bench:
    """The model, inputs and settings of one run, and the rows measured so far (the first is the exact engine)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        (self.model, self.make_composite, self.x_a, self.x_b, self.similarity, self.head, self.strides, self.info,
         self.size) = build(args.model, args.size, self.device, getattr(torch, args.dtype), args.pairs)
        self.n = self.x_a.shape[0]
        self.x = torch.cat([self.x_a, self.x_b])
        self.pooling = Pooling(patch=args.patch)
        self.grid = self.pooling.resolve(self.x.shape[1:])
        self.rows = []
        self.plan = None
        self.floor_chunk = 1

    def engine(self, model=None, **kwargs) -> BiLRP:
        """A fresh engine on ``model`` (default the benchmark model) with a fresh composite."""
        kwargs.setdefault('memory_budget', self.args.memory_budget)
        return BiLRP(self.model if model is None else model, composite=self.make_composite(),
                     similarity=self.similarity, head=self.head, **kwargs)

    def explain(self, bilrp: BiLRP, x_a=None, x_b=None):
        """Exact pooled BiLRP of the benchmark pairs (or of ``x_a``, ``x_b``), no marginals."""
        x_a, x_b = (self.x_a, self.x_b) if x_a is None else (x_a, x_b)
        return bilrp.explain(x_a, x_b, pooling=self.pooling, marginals=False)

    def add(self, method, k, seconds, peak, passes, metrics=None, note=''):
        """Record and print one measurement."""
        row = {'method': method, 'k': k, 'seconds': seconds, 'peak_mb': peak / 2 ** 20, 'passes': passes, 'note': note}
        row.update(metrics or {})
        self.rows.append(row)
        ratio = seconds / self.rows[0]['seconds']
        err = f"{row['rel_fro']:.3g}" if 'rel_fro' in row else '-'
        print(f'{method:<26} k={k!s:<6} {seconds:9.3f}s  x{ratio:6.3f} of exact  peak {row["peak_mb"]:8.1f} MB  '
              f'rel_fro {err}  {note}', flush=True)

    def compare(self, relevance: torch.Tensor, reference: torch.Tensor) -> dict:
        return compare(relevance.double(), reference, self.args.topk)


def time_exact(bench: Bench) -> tuple:
    """The exact engine (``--method``, default ``'auto'``: the path its cost model picks) with the automatic chunk
    size (the reference), and with the fixed ``--chunks``."""
    args = bench.args
    bilrp = bench.engine(method=args.method)
    plan = bilrp.plan(bench.x_a, bench.x_b, pooling=bench.pooling)
    print(f'plan: {plan.describe()}', flush=True)
    with bilrp:
        h = bilrp.embed(bench.x_a[:1]).shape[1]
        auto_chunk = bilrp.open_session(bench.x).chunk_size(h) if plan.path == 'units' else 1
        seconds, peak, exact = timed(lambda: bench.explain(bilrp), bench.device, args.repeats)
    reference = exact.relevance.double()
    bench.add('exact', h, seconds, peak, plan.passes, bench.compare(exact.relevance, reference),
              f'{"patch" if plan.path == "patches" else "unit"}-major, delta {float(exact.delta.abs().max()):.2g}')
    bench.plan = plan
    for chunk in args.chunks if plan.path == 'units' else []:
        if chunk >= h or chunk == auto_chunk:
            continue
        with bench.engine(chunk_size=chunk, method=args.method) as fixed:
            seconds, peak, res = timed(lambda: bench.explain(fixed), bench.device, 1)
        bench.add('exact', h, seconds, peak, h, bench.compare(res.relevance, reference), f'chunk {chunk}')
    return bilrp, exact, reference, h, auto_chunk


def time_unit_major(bench: Bench, exact, reference: torch.Tensor, h: int) -> None:
    """The h-pass path (``method='batched'``, one LRP pass per unit): all units when ``--unit-subset`` allows (then
    checked against the reference), else the factors of a unit subset, extrapolated linearly to ``h``."""
    units = min(h, bench.args.unit_subset or (h if h <= 512 else 64))
    engine = bench.engine(method='batched')
    if units == h:
        seconds, peak, res = timed(lambda: bench.explain(engine), bench.device, 1)
        bench.add('exact unit-major (h passes)', h, seconds, peak, h, bench.compare(res.relevance, reference))
        return
    subset = torch.arange(units, device=bench.device)
    with engine:
        seconds, peak, factors = timed(lambda: engine.factors(bench.x, bench.pooling, units=subset), bench.device, 1)
    rows = torch.cat([exact.factors_a.relevance, exact.factors_b.relevance])[:, :units]
    error = float((factors.relevance.double() - rows.double()).abs().max() / rows.double().abs().max())
    bench.add('exact unit-major (h passes)', h, seconds * h / units, peak, h, {},
              f'timed {units} units, extrapolated to {h}; factor rows vs exact: rel. max error {error:.2g}')


def time_hybrid(bench: Bench, reference: torch.Tensor, h: int) -> None:
    r"""The single-pair hybrid: :math:`F(x_b)` by :math:`P_b` second-order passes on ``x_b`` alone, then
    :math:`R_{:,q} = \mathrm{pool}\,M(x_a)(\phi(x_a) \odot c\,G\,F(x_b)_{:,q})` by :math:`P_b` LRP passes on ``x_a``
    (it gives no factors of ``x_a``)."""
    patches, units = bench.engine(method='patches'), bench.engine(method='batched')

    def run():
        with patches:
            fb = patches.factors(bench.x_b, bench.pooling)
        similarity = units.similarity
        emb_a = units.embed(bench.x_a)
        matrix = similarity.matrix(emb_a, fb.embedding)
        columns = fb.relevance.permute(2, 0, 1)  # (P_b, N, h)
        if matrix is not None:
            columns = columns @ matrix.to(columns).T
        mult = similarity.scale(emb_a, fb.embedding).to(columns)[None, :, None] * columns
        with units:
            _, rel = units.propagate(bench.x_a, mult, pooling=bench.pooling)  # (P_b, N, P_a)
        return rel.permute(1, 2, 0)

    seconds, peak, relevance = timed(run, bench.device, 1)
    passes = 2 * bench.grid.num_patches + 2
    bench.add('exact hybrid (pair)', h, seconds, peak, passes, bench.compare(relevance, reference),
              'P_b second-order passes on x_b, P_b LRP passes on x_a')


def time_precisions(bench: Bench, reference: torch.Tensor, h: int) -> None:
    """The exact engine in reduced precision (model and inputs cast; error against the float32 result)."""
    precisions = [torch.bfloat16] + ([torch.float16] if bench.device.type == 'cuda' else [])
    for dtype in precisions:
        model_low = copy.deepcopy(bench.model).to(dtype)
        try:
            with bench.engine(model_low) as low_bilrp:
                low_a, low_b = bench.x_a.to(dtype), bench.x_b.to(dtype)
                seconds, peak, res = timed(lambda e=low_bilrp, a=low_a, b=low_b: bench.explain(e, a, b),
                                           bench.device, bench.args.repeats)
            bench.add(f'exact {str(dtype)[6:]}', h, seconds, peak, h, bench.compare(res.relevance, reference))
        except (RuntimeError, TypeError) as error:
            print(f'exact {dtype}: not supported here ({error})')
        del model_low


def time_naive(bench: Bench, exact, reference: torch.Tensor, h: int) -> None:
    """The naive per-unit loop: with the same (fast) rules as the engine, and with Zennit's own Gamma/ZBox, which
    is what a Zennit user has today."""
    units = min(h, bench.args.naive_units or h)
    for label, fast in (('naive Zennit loop', True), ('naive Zennit loop, Zennit rules', False)):
        composite = bench.make_composite()
        if hasattr(composite, 'fast'):
            composite.fast = fast
        elif not fast:
            continue
        seconds, peak, expl = timed(lambda c=composite: naive_loop(bench.model, c, bench.x, h, bench.grid, units),
                                    bench.device, 1)
        metrics, note = {}, ''
        if units == h:
            n = bench.n
            naive = torch.einsum('bmp,bmq->bpq', expl[:n].double(), expl[n:].double())
            if bench.similarity == 'cosine':
                emb_a, emb_b = exact.factors_a.embedding.double(), exact.factors_b.embedding.double()
                naive = naive / (emb_a.norm(dim=1) * emb_b.norm(dim=1))[:, None, None]
            metrics = bench.compare(naive, reference)
        else:
            note = f'timed {units} units, extrapolated to {h}'
            seconds = seconds * h / units
        bench.add(label, h, seconds, peak, h, metrics, note)


def time_floor(bench: Bench, h: int, auto_chunk: int) -> None:
    """The floor: min(h, P) plain vector-Jacobian products of the same network (no LRP rules), as one ordinary
    backward pass each and batched (``is_grads_batched``); the cheaper is the floor. Also ``torch.func``."""
    count = min(h, bench.grid.num_patches)
    best = None
    for chunk in sorted({1, max(1, min(count, auto_chunk if auto_chunk > 1 else 16))}):
        seconds, peak, _ = timed(lambda c=chunk: plain_vjps(bench.model, bench.x, count, c, bench.grid), bench.device,
                                 bench.args.repeats)
        if best is None or seconds < best[0]:
            best = (seconds, peak, chunk)
    bench.floor_chunk = best[2]
    bench.add('plain VJP floor', count, best[0], best[1], count, {},
              f'min(h, P) = {count} plain VJPs, chunk {best[2]} (fastest of 1 and batched)')
    try:
        seconds, peak, _ = timed(lambda: plain_vjps_vmap(bench.model, bench.x, count, bench.grid), bench.device,
                                 bench.args.repeats)
        bench.add('plain VJP vmap(vjp)', count, seconds, peak, count, {}, f'torch.func, {count} seeds at once')
    except (RuntimeError, TypeError) as error:
        print(f'vmap(vjp) floor failed: {error}')


def time_estimators(bench: Bench, bilrp: BiLRP, reference: torch.Tensor, h: int) -> None:
    """Every cheaper estimator at every budget ``k``, averaged over ``--seeds`` for the random ones."""
    args = bench.args
    ks = sorted({max(1, int(round(f * h))) for f in args.fractions})
    modes = [('select', {}, 1), ('sample', {'scheme': 'systematic'}, args.seeds),
             ('sample multinomial', {'scheme': 'multinomial'}, args.seeds),
             ('gaussian', {}, args.seeds), ('orthogonal', {}, args.seeds), ('sign', {}, args.seeds)]
    with bilrp:
        for k in ks:
            for name, kwargs, n_seeds in modes:
                if name == 'sample multinomial':
                    kwargs = dict(kwargs, keep=k // 2)
                results = [_time_estimate(bench, bilrp, reference, k, name.split()[0], s, kwargs)
                           for s in range(n_seeds)]
                avg = {key: statistics.mean(r[3][key] for r in results) for key in results[0][3]}
                bench.add(name, k, min(r[0] for r in results), max(r[1] for r in results),
                          max(r[2] for r in results), avg, f'mean of {n_seeds} seeds' if n_seeds > 1 else '')


def _time_estimate(bench: Bench, bilrp: BiLRP, reference: torch.Tensor, k: int, mode: str, seed: int,
                   kwargs: dict) -> tuple:
    """``(seconds, peak, passes, metrics)`` of one estimate."""
    def run():
        return approximate(bilrp, bench.x_a, bench.x_b, k=k, mode=mode, pooling=bench.pooling, seed=seed, **kwargs)
    seconds, peak, approx = timed(run, bench.device, bench.args.repeats_cheap)
    metrics = bench.compare(approx.relevance, reference)
    est = approx.error_estimate
    metrics['error_estimate'] = float(est.mean()) if est is not None else float('nan')
    return seconds, peak, approx.passes, metrics


def time_layers(bench: Bench, reference: torch.Tensor, h: int) -> None:
    """Exact BiLRP down to intermediate feature maps, compared at the matching patch grid."""
    for layer, stride in bench.strides.items():
        if bench.args.patch % stride:
            continue
        feat_patch = bench.args.patch // stride
        try:
            def run(layer=layer, feat_patch=feat_patch):
                return explain_at_layer(bench.model, layer, bench.x_a, bench.x_b, pooling=feat_patch,
                                        composite=bench.make_composite(), similarity=bench.similarity,
                                        head=bench.head)
            seconds, peak, res = timed(run, bench.device, bench.args.repeats)
        except ValueError as error:
            print(f'layer {layer}: {error}')
            continue
        if res.relevance.shape != reference.shape:
            print(f'layer {layer}: grid {tuple(res.relevance.shape)} does not match {tuple(reference.shape)}')
            continue
        bench.add(f'layer {layer}', h, seconds, peak, h, bench.compare(res.relevance, reference),
                  f'feature patch {feat_patch}')


def retime(bench: Bench, bilrp: BiLRP, auto_chunk: int) -> float:
    """Re-time the exact engine and the floor at the end, interleaved (on a shared machine the load changes during
    the run; interleaving exposes both to the same load); returns the exact engine's time."""
    rows = bench.rows
    floor_row = next(r for r in rows if r['method'] == 'plain VJP floor')
    count = int(floor_row['k'])
    with bilrp:
        for _ in range(bench.args.repeats):
            again, _, _ = timed(lambda: bench.explain(bilrp), bench.device, 1)
            rows[0]['seconds'] = min(rows[0]['seconds'], again)
            again, _, _ = timed(lambda: plain_vjps(bench.model, bench.x, count, bench.floor_chunk, bench.grid),
                                bench.device, 1)
            floor_row['seconds'] = min(floor_row['seconds'], again)
    return rows[0]['seconds']


def summarize(bench: Bench, h: int, t_exact: float, auto_chunk: int) -> dict:
    """Ratios per row, the run's settings, the headline ratios and the targets of issue 14."""
    rows = bench.rows
    for row in rows:
        row['ratio_to_exact'] = row['seconds'] / t_exact
        row['pass_fraction'] = row['passes'] / h
    floor = next(r for r in rows if r['method'] == 'plain VJP floor')
    naive = next(r for r in rows if r['method'] == 'naive Zennit loop')
    unit_major = next((r for r in rows if r['method'] == 'exact unit-major (h passes)'), None)
    plan = bench.plan
    summary = {
        'model': bench.args.model, 'weights': bench.info.get('weights'), 'input': [bench.n, *bench.x.shape[1:]],
        'dtype': bench.args.dtype, 'pairs': bench.n, 'h': h, 'patches': bench.grid.num_patches,
        'device': str(bench.device), 'threads': torch.get_num_threads(),
        'cpu': platform.processor() or platform.machine(), 'torch': torch.__version__, 'auto_chunk': auto_chunk,
        'path': plan.path, 'plan': plan.describe(), 'exact_seconds': t_exact,
        'exact_seconds_per_pair': t_exact / bench.n, 'floor_seconds': floor['seconds'],
        'exact_over_floor': t_exact / floor['seconds'], 'naive_over_exact': naive['seconds'] / t_exact,
        'load_average': os.getloadavg(), 'argv': sys.argv[1:],
    }
    if unit_major is not None:
        summary['unit_major_over_exact'] = unit_major['seconds'] / t_exact
    hybrid = next((r for r in rows if r['method'] == 'exact hybrid (pair)'), None)
    if hybrid is not None:
        summary['hybrid_over_exact'] = hybrid['seconds'] / t_exact
    zennit_rules = next((r for r in rows if r['method'] == 'naive Zennit loop, Zennit rules'), None)
    if zennit_rules is not None:
        summary['naive_zennit_rules_over_exact'] = zennit_rules['seconds'] / t_exact
    summary['targets'] = {
        'at_least_15x_faster_than_h_pass_path': None if unit_major is None else summary['unit_major_over_exact'] >= 15,
        'at_most_3x_the_floor': summary['exact_over_floor'] <= 3,
        'under_2_minutes_per_pair': summary['exact_seconds_per_pair'] < 120,
    }
    candidates = [r for r in rows if 'rel_fro' in r and r['method'] != 'exact'
                  and not r['method'].startswith(('exact', 'naive'))]
    for key, label in (('ratio_to_exact', 'time'), ('pass_fraction', 'passes')):
        cheap = [r for r in candidates if r[key] <= 1 / 8 + 1e-9 and not (key == 'pass_fraction'
                                                                         and r['method'].startswith('layer'))]
        if cheap:
            best = min(cheap, key=lambda r: r['rel_fro'])
            summary[f'best_at_1/8_{label}'] = {k: best[k] for k in ('method', 'k', 'rel_fro', 'ratio_to_exact',
                                                                     'pass_fraction')}
    return summary


def write(rows: list, summary: dict, out_dir: Path, draw: bool) -> None:
    """Write ``results.csv`` and ``results.json``, print the table and (with ``draw``) save the figure."""
    keys = ['method', 'k', 'passes', 'pass_fraction', 'seconds', 'ratio_to_exact', 'peak_mb', 'rel_fro',
            'topk_spearman', 'topk_overlap', 'mse', 'smape', 'error_estimate', 'note']
    with open(out_dir / 'results.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / 'results.json').write_text(json.dumps(summary, indent=2))
    print()
    print(f"{'method':<26}{'k':>6}{'seconds':>10}{'x exact':>9}{'peak MB':>9}{'rel_fro':>9}{'top-k rho':>10}"
          f"{'SMAPE':>8}{'est.err':>9}")

    def fmt(row, key, spec):
        value = row.get(key)
        return format(value, spec) if isinstance(value, float) and value == value else '-'

    for row in rows:
        print(f"{row['method']:<26}{row['k']!s:>6}{row['seconds']:>10.3f}{row['ratio_to_exact']:>9.3f}"
              f"{row['peak_mb']:>9.1f}{fmt(row, 'rel_fro', '>9.3f'):>9}{fmt(row, 'topk_spearman', '>10.3f'):>10}"
              f"{fmt(row, 'smape', '>8.1f'):>8}{fmt(row, 'error_estimate', '>9.3f'):>9}")
    print(json.dumps(summary, indent=2))
    if draw:
        plot(rows, summary, out_dir / 'error_vs_cost.png')
    print(f'wrote {out_dir}/results.csv, results.json' + ('' if not draw else ', error_vs_cost.png'))


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out or f'out/speed/{args.model}')
    if args.replot:
        return replot(out_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    WARMUP[0] = not args.no_warmup
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bilrp, exact, reference, h, auto_chunk = time_exact(bench)
    time_unit_major(bench, exact, reference, h)
    if bench.n == 1 and not args.no_hybrid:
        time_hybrid(bench, reference, h)
    if not args.no_estimators:
        time_precisions(bench, reference, h)
    time_naive(bench, exact, reference, h)
    time_floor(bench, h, auto_chunk)
    if not args.no_estimators:
        time_estimators(bench, bilrp, reference, h)
        time_layers(bench, reference, h)
    t_exact = bench.rows[0]['seconds'] if args.no_retime else retime(bench, bilrp, auto_chunk)
    summary = summarize(bench, h, t_exact, auto_chunk)
    write(bench.rows, summary, out_dir, not args.no_plot)
    return bench.rows, summary


def plot(rows, summary, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    methods = []
    for row in rows:
        if row['method'] not in methods and 'rel_fro' in row and row['method'] != 'exact' \
                and not row['method'].startswith(('naive', 'exact unit', 'exact hybrid')):
            methods.append(row['method'])
    markers = 'osD^v<>phx*'
    panels = (('ratio_to_exact', 'rel_fro', 'wall time / exact BiLRP time (same run)', 'relative Frobenius error'),
              ('pass_fraction', 'rel_fro', 'LRP backward passes / h', 'relative Frobenius error'),
              ('pass_fraction', 'topk_spearman', 'LRP backward passes / h', 'Spearman rho on the top pairs'))
    for i, method in enumerate(methods):
        sel = [r for r in rows if r['method'] == method and 'rel_fro' in r]
        if method.startswith('layer') and sel:
            sel = [dict(r, pass_fraction=float('nan')) for r in sel]
        for ax, (xkey, ykey, _, _) in zip(axes, panels):
            # measured times are noisy on a shared machine: markers only on the time axis, lines on the budget axis
            line = '-' if len(sel) > 1 and xkey == 'pass_fraction' else 'none'
            ax.plot([r.get(xkey, r['passes'] / summary['h']) for r in sel], [r[ykey] for r in sel],
                    marker=markers[i % len(markers)], label=method, linestyle=line)
    from matplotlib.ticker import LogLocator, NullFormatter

    for ax, (_, ykey, xlabel, ylabel) in zip(axes, panels):
        ax.set_xscale('log')
        # decades only: minor labels (2x10^-2, 3x10^-2, ...) overlap on a narrow panel
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1 / 8, color='gray', linestyle=':', linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ykey == 'rel_fro':
            ax.set_yscale('log')
            ax.axhline(0.1, color='gray', linestyle='--', linewidth=1)
    axes[0].set_title('error vs measured cost (intermediate layers: exact passes, fewer layers)', fontsize=8)
    axes[1].set_title('error vs budget k / h (dotted: 1/8, dashed: 10% error)', fontsize=8)
    axes[2].legend(fontsize=7, loc='lower right')
    fig.suptitle(f"{summary['model']}: {summary['weights']}, h={summary['h']}, input {summary['input']}, "
                 f"{summary['patches']} patches, {summary['device']} x{summary['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == '__main__':
    main()
