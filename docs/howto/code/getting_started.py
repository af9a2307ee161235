"""Getting started: the first BiLRP explanation of your own model."""
import torch
from skimage import data
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, BiLRPResult, canonizers_for
from zennit_bilrp.app.viz import plot_bilrp, save_figure
from zennit_bilrp.core.results import describe_run
from zennit_bilrp.models.demo import to_tensor
from zennit_bilrp.models.small_resnet import SmallResNet

torch.manual_seed(0)

# 1. An embedding model phi: (N, 3, H, W) -> (N, h), in eval mode (here h = 16 pooled features).
model = SmallResNet(widths=(8, 16)).eval()

# 2. Two inputs to compare; BiLRP explains pairs, so x_a[i] is paired with x_b[i]. Here 32 x 32 crops of
#    scikit-image photos: the astronaut's face and a shifted crop of it, a cat and a cup of coffee.
astronaut, cat, coffee = data.astronaut(), data.chelsea(), data.coffee()
x_a = torch.cat([to_tensor(astronaut[20:220, 140:340], (32, 32)), to_tensor(cat[0:300, 100:400], (32, 32))])
x_b = torch.cat([to_tensor(astronaut[40:240, 170:370], (32, 32)), to_tensor(coffee[50:350, 100:400], (32, 32))])

# 3. A Zennit composite with the model's canonizers; zero_params=['bias'] keeps biases from absorbing relevance.
composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))

# 4. Explain the cosine similarity, pooled to 8 x 8 pixel patches (a 4 x 4 grid per image).
with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
    result = bilrp(x_a, x_b, pooling=8)

print('pairwise relevance', tuple(result.relevance.shape))  # (2, 16, 16): (pairs, patches of x_a, patches of x_b)
print('similarity        ', result.similarity.tolist())     # y for each pair
print('conservation gap  ', result.delta.tolist())          # y - sum(R), ~0

# The relevance of all patch pairs sums to the similarity (conservation).
assert result.relevance.shape == (2, 16, 16)
assert ((result.delta / result.similarity).abs() < 1e-2).all()  # exact up to the rules' stabilizers

# The most relevant patch pairs, with their centers in pixel coordinates (row, col).
top = result.top_pairs(k=5)
print('top pair of pair 0: patch', int(top.index_a[0, 0]), 'of x_a with patch', int(top.index_b[0, 0]), 'of x_b,',
      'centers', top.centers_a[0, 0].tolist(), top.centers_b[0, 0].tolist())

# First-order marginals: heatmaps shaped like the inputs (channels kept), sum_i' R[i, i'] at pixel resolution.
assert result.marginal_a.shape == x_a.shape
assert torch.allclose(result.marginal_a.flatten(1).sum(1), result.similarity, rtol=1e-2)

# The standard picture: both images with lines for the top patch pairs (red positive, blue negative), and the
# two marginal heatmaps below; returns a matplotlib Figure.
# (The model has random weights here, so the pairs it finds show the API, not a trained model's notion of similar.)
figure = plot_bilrp(result, x_a, x_b, index=0, k=10)
save_figure(figure, 'first_bilrp.png')

# Keep the result: one NPZ file with relevance, similarity, factors, patch grids, marginals and metadata.
result.save('first_bilrp.npz', metadata=describe_run(bilrp, model_name='SmallResNet(widths=(8, 16))'))
again = BiLRPResult.load('first_bilrp.npz')
assert torch.equal(again.relevance, result.relevance) and again.grid_a == result.grid_a
print('saved with', again.metadata['composite'], 'and', again.metadata['similarity'])
