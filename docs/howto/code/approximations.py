"""How-to: cheaper estimates of BiLRP, their measured error, and when to trust them."""
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, canonizers_for
from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_pairs
from zennit_bilrp.scale.approximations import approximate, explain_at_layer
from zennit_bilrp.scale.metrics import compare


def composite(model):
    return EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))


model = load_synthetic_encoder('mixed')        # a small trained encoder, h = 32 embedding units
pairs = make_pairs(4, seed=0)
x_a, x_b = pairs.x_a, pairs.x_b                # 4 pairs of 32 x 32 images

with BiLRP(model, composite=composite(model), similarity='cosine') as bilrp:
    exact = bilrp(x_a, x_b, pooling=4, marginals=False)          # h = 32 backward passes per input
    h = exact.factors_a.embedding.shape[1]
    errors = {}
    print(f'{"mode":>10} {"passes":>6} {"rel. error":>10} {"top-20 overlap":>14} {"error estimate":>14}')
    for k in (h // 8, h // 4, h // 2):
        for mode in ('select', 'sample', 'orthogonal'):
            estimate = approximate(bilrp, x_a, x_b, k=k, mode=mode, pooling=4, seed=0)
            metrics = compare(estimate.relevance, exact.relevance, k=20)
            errors[mode, k] = metrics['rel_fro']
            indicator = '-' if estimate.error_estimate is None else f'{float(estimate.error_estimate.mean()):.3f}'
            print(f'{mode:>10} {estimate.passes:>6} {metrics["rel_fro"]:>10.3f} {metrics["topk_overlap"]:>14.2f} '
                  f'{indicator:>14}')

    # 'select' with a threshold: the fewest units that carry 90 % of sum_m |phi_m(x) phi_m(x')| (per pair);
    # 1 - coverage is returned as a cheap error indicator, no exact run needed.
    chosen = approximate(bilrp, x_a, x_b, mode='select', threshold=0.9, pooling=4)
    print('threshold 0.9:', chosen.passes, 'units, coverage', chosen.coverage.tolist(),
          'rel. error', compare(chosen.relevance, exact.relevance)['rel_fro'])

# Unit selection improves with the budget (and is exact when it keeps all h units).
assert errors['select', h // 2] < errors['select', h // 8]

# Explaining down to an intermediate feature map: relevance over its positions (here 16 x 16, pooled to 4 x 4
# patches of 4 x 4 positions); backward passes only run through the layers above it.
coarse = explain_at_layer(model, 'stages.1', x_a, x_b, pooling=4, composite=composite(model), similarity='cosine')
print('at stages.1:', coarse.extras['feature_shape'], '->', tuple(coarse.relevance.shape))
