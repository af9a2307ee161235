"""How-to: identically represented inputs (IRIs) -- generate, score, compare models, explain with BiLRP."""
from zennit.composites import EpsilonPlus

from zennit_bilrp import canonizers_for
from zennit_bilrp.analysis.iri import (
    InvarianceTable,
    IRIGenerator,
    IRIResult,
    LpBall,
    alignment_score,
    explain_iris,
    invariance_table,
)
from zennit_bilrp.analysis.perceptual import lp_distance
from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_images

model = load_synthetic_encoder('mixed')          # a small trained encoder (32 x 32 images)
references = make_images(4, seed=3).x            # (4, 3, 32, 32) in [0, 1]
others = make_images(4, seed=4).x

# IRIs: images whose representation at a layer (default: the pooled penultimate one) matches the reference's,
# from random starting points, by normalized gradient descent (best iterate kept per sample).
generator = IRIGenerator(model, iterations=50, seed=0, progress=False)
result = generator(references, start='super-noise')
print('layer', repr(result.layer), '| distance from', result.start_distance.tolist(), 'to',
      result.representation_distance.tolist(), '| reached target', result.reached.tolist())
assert (result.representation_distance < result.start_distance / 5).all()
result.save('iris.npz')                          # a plain NumPy archive (no pickle) ...
assert IRIResult.load('iris.npz').layer == result.layer   # ... read back with every tensor and setting

# The automatic alignment score: % of IRIs perceptually closer to their reference than to their start,
# for every offline perceptual distance (LPIPS too when installed with local weights).
print(alignment_score(result))

# Adversarial IRIs, variant (b): start from *other* images and stay within an l-inf ball of radius 8/255 around them.
ball = LpBall(8 / 255, 'linf')
adversarial = IRIGenerator(model, iterations=50, ball=ball, seed=0, progress=False)(references, start=others)
assert (lp_distance(adversarial.iris, others, 'linf') <= 8 / 255).all()
print('in the ball: distance', adversarial.representation_distance.tolist())
# (variant (a): IRIGenerator(model, perceptual_weight=c) subtracts c times a perceptual distance to the reference.)

# Shared invariance: how identically does another model represent the IRIs of the first?
table = invariance_table({'mixed': model, 'object': load_synthetic_encoder('object')}, references,
                         iterations=50, progress=False)
print(table.format())
assert InvarianceTable.load(table.save('invariance.csv')).names == table.names   # one row per model pair

# Why does the model find an IRI and its reference identical? BiLRP of each (IRI, reference) pair, and the share
# of relevance on corresponding patches (same position in both images; 1/P is chance).
explanation = explain_iris(result, model, pooling=8,
                           composite=EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model)))
print('corresponding-patch share / chance:', explanation.share['ratio'].tolist())
assert explanation.result.relevance.shape == (4, 16, 16)
