"""How-to: the alignment study -- fit an alignment head, then measure object-versus-context relevance."""
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, canonizers_for
from zennit_bilrp.analysis.alignment import (
    AlignedModel,
    AlignmentFit,
    fit_alignment,
    load_glocal_transform,
    odd_one_out_triplets,
    with_alignment_rule,
)
from zennit_bilrp.analysis.study import ContextStudy, read_results, summarize
from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_images, make_pairs


def composite(model):
    return EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))


# 1. An alignment head: fit a gLocal-style affine transform of the base model's features to odd-one-out triplets
#    of a (here synthetic) "human" who judges mostly by the object and a little by the background.
base = load_synthetic_encoder('mixed')                 # shipped encoder of the synthetic benchmark, h = 32
images = make_images(96, seed=1)
with torch.no_grad():
    features = base(images.x)
onehot = torch.nn.functional.one_hot
human = torch.cat([onehot(images.object, 4), 0.3 * onehot(images.background, 4)], dim=1).float()
triplets = odd_one_out_triplets(human, 800, seed=0)
fit = fit_alignment(features, triplets[:640], triplets[640:], epochs=30)
print(f'held-out triplet accuracy: base {fit.baseline_test_accuracy:.2f}, aligned {fit.test_accuracy:.2f}')
fit.save('transform.npz')                              # the published gLocal .npz format (plus the fit record) ...
assert AlignmentFit.load('transform.npz').test_accuracy == fit.test_accuracy
aligned = AlignedModel(base, load_glocal_transform('transform.npz')).eval()   # ... loaded like a downloaded one

# 2. Explain the same pairs (one object in both images, random backgrounds, exact masks) with every model, and
#    split each explanation into object/context shares. Two shipped reference encoders, one keyed on the object
#    and one on the background, show what the measure can tell apart.
explainers = {
    'base': BiLRP(base, composite=composite(base), similarity='cosine'),
    'aligned': BiLRP(aligned, composite=with_alignment_rule(composite(aligned), aligned), similarity='cosine'),
}
for name in ('object', 'context'):
    reference = load_synthetic_encoder(name)
    explainers[name] = BiLRP(reference, composite=composite(reference), similarity='cosine')
pairs = make_pairs(8, seed=2, background='random')
study = ContextStudy(explainers, pooling=2, progress=False)     # 2 x 2 pixel patches
study.run(pairs, 'study')                              # per-pair CSV; resumable, shardable (rank/world_size)
rows = read_results('study')

# 3. Summarize: means with bootstrap intervals, paired differences against the base model with tests.
summary = summarize(rows, metrics=['marginal_context_a', 'context_positive'], baseline='base', n_boot=200)
means = {(r['model'], r['metric']): r['mean'] for r in summary if r['kind'] == 'mean'}
for model in explainers:
    print(f'{model:>8}: context share of the marginal {means[model, "marginal_context_a"]:.2f}, '
          f'pairwise relevance not object-object {means[model, "context_positive"]:.2f}')
for r in summary:
    if r['kind'] == 'paired_difference':
        print(f'{r["model"]}, {r["metric"]}: {r["mean"]:+.3f} [{r["ci_low"]:+.3f}, {r["ci_high"]:+.3f}], '
              f'Wilcoxon p = {r["wilcoxon_p"]:.3f}')
assert means['context', 'marginal_context_a'] > means['object', 'marginal_context_a']
