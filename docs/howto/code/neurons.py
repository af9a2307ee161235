"""How-to: neuron selection -- explanations of selected neurons, how many to keep, critical paths, reconstruction."""
import matplotlib
import torch
from torch import nn
from torchvision.models.vgg import make_layers
from zennit.composites import EpsilonPlus, EpsilonPlusFlat

from zennit_bilrp import BiLRP, canonizers_for
from zennit_bilrp.analysis.critical_path import critical_paths
from zennit_bilrp.analysis.neurons import NeuronLRP, bilrp_selection_curve, explain_pair_neurons, explain_units
from zennit_bilrp.analysis.reconstruction import reconstruct
from zennit_bilrp.app.viz import plot_critical_paths, plot_selection_curve
from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_pairs

matplotlib.use('Agg')
torch.manual_seed(0)

# --- First-order LRP of a classifier (a small VGG-style network with random weights here).
classifier = nn.Sequential(make_layers([8, 'M', 16, 'M', 32]), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(32, 10)).eval()
x = torch.rand(2, 3, 32, 32)
layer = '0.6'                                      # the third convolution's ReLU: 32 channels, a cut of the network
with NeuronLRP(classifier, composite=EpsilonPlusFlat(zero_params=['bias'])) as lrp:
    full = lrp.explain(x, layer)                  # all channels: the ordinary LRP heatmap of the predicted class
    top = lrp.explain(x, layer, topk=4)           # the 4 most relevant channels of each sample
    print('top channels per sample:', top.neurons.tolist())
    assert torch.allclose(lrp.explain(x, layer, neurons=torch.arange(32)).relevance, full.relevance)

    # How many channels are needed? MSE and SMAPE of the top-k heatmap against the full one, k = 1..32.
    curve = lrp.selection_curve(x, layer)
    print('smallest k with SMAPE <= 50 %:', curve.smallest_k(50.0),
          '| with relative MSE <= 0.05:', curve.smallest_k(0.05, metric='mse', relative=True))
    plot_selection_curve(curve, sample=0, tolerance=50.0)

    # Critical paths: the top channels of each layer and the relevance flowing between them.
    graph = critical_paths(lrp, x, ['0.1', '0.4', '0.6'], top=3)
print('critical chain:', graph.critical_chain())
print('relevance per layer (conserved):', [round(t, 4) for t in graph.layer_totals()], graph.output_relevance)
graph.save_json('critical_path.json')
plot_critical_paths(graph)

# Feature-map reconstruction (DeconvNet) of a channel, beside its LRP explanation.
rebuilt = reconstruct(classifier, x, layer, channels=top.neurons[0, :2])
assert rebuilt.deconv.shape == rebuilt.lrp.shape == (2, 2, 3, 32, 32)

# --- BiLRP: the neurons of a similarity model's embedding are its units.
encoder = load_synthetic_encoder('mixed')          # h = 32 units
pairs = make_pairs(2, seed=0)
bilrp = BiLRP(encoder, composite=EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(encoder)),
              similarity='cosine')
with bilrp:
    exact = bilrp(pairs.x_a, pairs.x_b, pooling=4, marginals=False)
    few = explain_units(bilrp, pairs.x_a, pairs.x_b, k=6, pooling=4, result=exact)   # the 6 largest |phi_m phi'_m|
    units_curve = bilrp_selection_curve(bilrp, pairs.x_a, pairs.x_b, pooling=4, result=exact)
    # ... or neurons of an inner layer, on both sides of each pair (here channels 0-7 of the second stage)
    inner = explain_pair_neurons(bilrp, pairs.x_a, pairs.x_b, 'stages.1', torch.arange(8), pooling=4)
print('units needed for SMAPE <= 50 %:', units_curve.smallest_k(50.0))
print('share of the similarity carried by 6 units:', (few.relevance.sum((1, 2)) / exact.relevance.sum((1, 2))).tolist())
assert units_curve.smape[:, -1].max() < 1e-3                # all units: the full BiLRP
