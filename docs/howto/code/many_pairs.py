"""How-to: many pairs -- a cache of per-input factors for retrieval, and a DataLoader of pairs."""
import torch
from torch.utils.data import DataLoader, TensorDataset
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, canonizers_for, pairwise_relevance
from zennit_bilrp.models.small_resnet import SmallResNet
from zennit_bilrp.scale.cache import FactorCache, explain_loader

torch.manual_seed(0)
model = SmallResNet(widths=(8, 16)).eval()
composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
gallery = torch.rand(6, 3, 32, 32)     # N = 6 gallery images
query = torch.rand(1, 3, 32, 32)

with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
    # N factor computations for the gallery (done once; save it to disk for later sessions) ...
    cache = FactorCache.build(bilrp, gallery, pooling=8, keys=[f'img{i}' for i in range(6)], progress=False)
    # ... and one for the query; all 6 pairings are matrix products.
    relevance, scores = cache.query(bilrp, query)         # (1, 6, 16, 16) and (1, 6)
    best = int(scores[0].argmax())
    print(cache, '\nbest match:', cache.keys[best], 'cosine', float(scores[0, best]))

    # the same as explaining the pair directly
    direct = bilrp(query, gallery[best:best + 1], pooling=8, marginals=False)
    assert torch.allclose(relevance[0, best], direct.relevance[0], rtol=1e-4, atol=1e-6)

    # gallery-to-gallery pairs need no backward pass at all
    pair_relevance = cache.pair(bilrp, 'img0', 'img1')    # (16, 16)

    # the engine's own building blocks: factors of any batch, every pairing at once
    factors = bilrp.factors(gallery, pooling=8)           # Factors: embedding (6, 16), relevance (6, 16, 16)
    table = pairwise_relevance(factors, factors, 'cosine', all_pairs=True)    # (6, 6, 16, 16)
    assert torch.allclose(table[0, 1], pair_relevance, rtol=1e-4, atol=1e-6)

cache.save('gallery.npz')
assert FactorCache.load('gallery.npz').keys == cache.keys

# A DataLoader of (x_a, x_b) pairs: composite registered once, a progress bar, results stacked (and saved).
pairs = DataLoader(TensorDataset(torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)), batch_size=4)
results = explain_loader(BiLRP(model, composite=composite, similarity='cosine'), pairs, pooling=8,
                         out='pairs.npz', progress=False)
print('relevance', results.relevance.shape, 'max |gap|', abs(results.delta).max())
assert results.relevance.shape == (8, 16, 16)
