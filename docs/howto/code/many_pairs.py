"""How-to: many pairs -- retrieval that explains only the top matches, the factor cache, a DataLoader of pairs."""
import torch
from skimage import data
from torch.utils.data import DataLoader, TensorDataset
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, canonizers_for, pairwise_relevance
from zennit_bilrp.app.viz import plot_pair_grid, save_figure
from zennit_bilrp.models.demo import DEMO_SIMILARITY, demo_composite, load_demo_model, to_tensor
from zennit_bilrp.models.small_resnet import SmallResNet
from zennit_bilrp.scale.cache import FactorCache, PairResults, explain_loader

torch.manual_seed(0)

# Retrieval: a gallery of 12 photo crops (48 x 48), ranked by the demo encoder's cosine similarity to a query.
photos = {'astronaut': data.astronaut(), 'cat': data.chelsea(), 'coffee': data.coffee(), 'rocket': data.rocket()}
crops, names = [], []
for name, photo in photos.items():
    side = min(photo.shape[:2]) * 2 // 3
    for k, (top, left) in enumerate([(0, 0), (photo.shape[0] - side, photo.shape[1] - side),
                                     ((photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2)]):
        crops.append(to_tensor(photo[top:top + side, left:left + side], (48, 48)))
        names.append(f'{name}_{k}')
gallery = torch.cat(crops)                                         # (12, 3, 48, 48)
cat = photos['cat']
query = to_tensor(cat[40:340, 150:450], (48, 48))                  # another crop of the cat

model = load_demo_model()
with BiLRP(model, composite=demo_composite(model), similarity=DEMO_SIMILARITY) as bilrp:
    # Embeddings only (one forward pass per batch); factors are computed later, for the matches a query explains.
    cache = FactorCache.build(bilrp, gallery, pooling=8, keys=names, progress=False)
    matches = cache.query(bilrp, query, k=3, marginals=True)       # 1 + 3 factor computations, not 1 + 12
    print(cache)
    print('top 3:', matches.keys[0], [round(v, 3) for v in matches.similarities[0].tolist()])
    best = matches[0]                                              # a BiLRPResult of the 3 pairs (query, match)
    # the same as explaining the pairs directly
    direct = bilrp(query.expand(3, -1, -1, -1), gallery[matches.indices[0]], pooling=8)
    assert torch.allclose(best.relevance, direct.relevance, rtol=1e-4, atol=1e-7)
    assert torch.allclose(best.marginal_b, direct.marginal_b, rtol=1e-4, atol=1e-7)
    assert cache.n_factors == 3

# One row per match, on one color and line-width scale, so that the top-1 and the top-3 match compare.
figure = plot_pair_grid(best, query[0], gallery[matches.indices[0]], k=12, names=matches.keys[0],
                        query_name='cat crop')
save_figure(figure, 'retrieval.png')

# Every pairing at once (the dense variant, for small galleries), and the engine's building blocks.
torch.manual_seed(0)
small = SmallResNet(widths=(8, 16)).eval()
composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(small))
images = torch.rand(6, 3, 32, 32)
with BiLRP(small, composite=composite, similarity='cosine') as bilrp:
    cache = FactorCache.build(bilrp, images, pooling=8, keys=[f'img{i}' for i in range(6)], progress=False,
                              lazy=False)                          # all 6 factors now
    relevance, scores = cache.query_dense(bilrp, images[:1])       # (1, 6, 16, 16) and (1, 6)
    pair_relevance = cache.pair(bilrp, 'img0', 'img1')             # gallery pairs: no backward pass at all
    factors = bilrp.factors(images, pooling=8)                     # Factors: embedding (6, 16), relevance (6, 16, 16)
    table = pairwise_relevance(factors, factors, 'cosine', all_pairs=True)    # (6, 6, 16, 16)
    assert torch.allclose(table[0, 1], pair_relevance, rtol=1e-4, atol=1e-6)
    assert torch.allclose(relevance[0], table[0], rtol=1e-4, atol=1e-6)

cache.save('gallery.npz')                                          # embeddings and computed factors (NPZ)
assert FactorCache.load('gallery.npz').keys == cache.keys

# A DataLoader of (x_a, x_b) pairs: composite registered once, a progress bar, results stacked with their patch
# grids (and, with marginals=True, the marginals), saved to NPZ.
pairs = DataLoader(TensorDataset(torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)), batch_size=4)
results = explain_loader(BiLRP(small, composite=composite, similarity='cosine'), pairs, pooling=8,
                         out='pairs.npz', progress=False, marginals=True)
print('relevance', results.relevance.shape, 'grid', results.grid_a.grid, 'marginals', results.marginal_a.shape)
assert results.relevance_grid().shape == (8, 4, 4, 4, 4)
assert PairResults.load('pairs.npz').grid_b == results.grid_b
