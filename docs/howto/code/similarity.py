"""How-to: dot product, cosine and bilinear similarities (and two-tower models)."""
import torch
from matplotlib.figure import Figure
from zennit.composites import EpsilonPlus

from zennit_bilrp import BilinearSimilarity, BiLRP, Normalize
from zennit_bilrp.app.viz import plot_relevance_matrix, save_figure
from zennit_bilrp.models.small_resnet import mlp

torch.manual_seed(0)

model = mlp((16, 32, 32, 8), bias=False).double().eval()     # phi: 16 features -> 8 units
# three pairs; float64 so that the identities below hold to 1e-8
x_a, x_b = torch.rand(3, 16, dtype=torch.float64), torch.rand(3, 16, dtype=torch.float64)
composite = EpsilonPlus(epsilon=1e-12, stabilizer=1e-12)


def explain(net, similarity, **kwargs):
    with BiLRP(net, composite=composite, similarity=similarity, **kwargs) as bilrp:
        return bilrp(x_a, x_b)                     # no pooling: relevance (3, 16, 16), feature by feature


# --- dot vs cosine: the cosine explanation is the dot explanation scaled by 1 / (|phi(x)| |phi(x')|).
dot, cosine = explain(model, 'dot'), explain(model, 'cosine')
with torch.no_grad():
    norms = model(x_a).norm(dim=1) * model(x_b).norm(dim=1)
assert torch.allclose(cosine.relevance, dot.relevance / norms[:, None, None], atol=1e-10)
assert torch.allclose(cosine.relevance.sum(dim=(1, 2)), cosine.similarity)   # both conserve their own y
print('dot   ', [round(v, 4) for v in dot.similarity.tolist()])
print('cosine', [round(v, 4) for v in cosine.similarity.tolist()])

# A model that ends in L2 normalization (a Normalize module, pass-through rule) with the dot product
# explains the same cosine similarity: the norm is treated as a constant either way.
normalized = torch.nn.Sequential(model, Normalize()).eval()
same = explain(normalized, 'dot')
assert torch.allclose(same.relevance, cosine.relevance, atol=1e-10)

# --- bilinear: y = phi(x)^T W phi(x'). Unit pair (m, n) gets phi_m W_mn phi'_n, explained on both sides.
A = torch.randn(8, 4, dtype=torch.float64)
W = A @ A.T                                         # e.g. a learned metric W = A A^T
bilinear = explain(model, BilinearSimilarity(W))   # or similarity=W
assert torch.allclose(bilinear.relevance.sum(dim=(1, 2)), bilinear.similarity)

# With W = A A^T this is the dot product of the projected embeddings phi(x) A, explained through one more
# linear layer (LRP-0 on it):
projection = torch.nn.Linear(8, 4, bias=False).double()
projection.weight.data = A.T.clone()
projected = explain(torch.nn.Sequential(model, projection).eval(), 'dot')
assert torch.allclose(projected.relevance, bilinear.relevance, atol=1e-8)

# --- two towers (e.g. image and text encoders) with different embedding sizes: a bilinear similarity
# with a (h_a, h_b) matrix pairs them; each tower gets its own copy of the composite.
tower_b = mlp((16, 24, 6), bias=False).double().eval()
W_ab = torch.randn(8, 6, dtype=torch.float64)
with BiLRP(model, composite=composite, model_b=tower_b, similarity=BilinearSimilarity(W_ab)) as bilrp:
    two_tower = bilrp(x_a, x_b)
assert torch.allclose(two_tower.relevance.sum(dim=(1, 2)), two_tower.similarity)
print('two towers: y =', [round(v, 4) for v in two_tower.similarity.tolist()])

# The feature-by-feature relevance of the first pair under the four similarities (one figure, one panel each).
figure = Figure(figsize=(13, 3.4))
for number, (name, result) in enumerate([('dot', dot), ('cosine', cosine), ('bilinear W = A A^T', bilinear),
                                         ('two towers, W (8 x 6)', two_tower)]):
    ax = figure.add_subplot(1, 4, number + 1, label=name)
    plot_relevance_matrix(result, index=0, ax=ax, grid_lines=False)
    ax.set_title(f'{name}: y = {float(result.similarity[0]):.3f}', fontsize=9)
    ax.set_xlabel("feature of x'")
    ax.set_ylabel('feature of x')
figure.subplots_adjust(wspace=0.75, left=0.04, right=0.96, bottom=0.15)
save_figure(figure, 'similarities.png')
