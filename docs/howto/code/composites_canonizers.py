"""How-to: choose a composite and canonizers for ResNet and VGG encoders, and check conservation."""
import warnings

import torch
from matplotlib.figure import Figure
from torchvision.models import resnet18
from torchvision.models.vgg import cfgs, make_layers
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer

from zennit_bilrp import BiLRP, canonizers_for
from zennit_bilrp.app.viz import save_figure
from zennit_bilrp.lrp.composites import BiLRPGamma, DepthGamma, imagenet_bounds
from zennit_bilrp.models.synthetic import load_synthetic_encoder, make_pairs

torch.manual_seed(0)

# ResNet: torchvision's resnet18 with the 512 pooled features as the embedding (random weights here).
model = resnet18()
model.fc = torch.nn.Identity()
for module in model.modules():  # give BatchNorm non-trivial statistics, as in a trained network
    if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 2.0)
model.eval()
x = torch.rand(2, 3, 32, 32)


def conservation(composite, strict=True):
    """Total input relevance / total output relevance for one LRP pass of sum_m phi_m (1.0 = conserving)."""
    with BiLRP(model, composite=composite, strict=strict) as bilrp:
        embedding, relevance = bilrp.propagate(x, torch.ones(1, 512), pooling=8)  # relevance: (1, N, P)
    return (relevance.sum(dim=-1)[0] / embedding.sum(dim=1)).tolist()


def names(canonizers):
    return [type(canonizer).__name__ for canonizer in canonizers]


print(names(canonizers_for(model)))  # ['ResNetCanonizer']: BatchNorm merge + a Sum module for `out += identity`
checks = {
    'recommended': conservation(EpsilonPlus(zero_params=['bias'], canonizers=[ResNetCanonizer()])),
    # strict mode refuses this one (the unhooked `out += identity`); strict=False shows what it would give
    'no canonizer': conservation(EpsilonPlus(zero_params=['bias']), strict=False),
    'biases kept': conservation(EpsilonPlus(canonizers=[ResNetCanonizer()])),
    'DepthGamma': conservation(DepthGamma(zero_params=['bias'], canonizers=canonizers_for(model))),
}
for name, ratio in checks.items():
    print(f'{name:>13}: sum R_in / sum phi = {ratio[0]:.4f}, {ratio[1]:.4f}')

assert all(abs(r - 1) < 1e-3 for r in checks['recommended'])
assert all(abs(r - 1) < 2e-2 for r in checks['DepthGamma'])      # LRP-gamma: conserves up to ~1% here
assert all(r > 100 for r in checks['no canonizer'])            # the skip connection doubles relevance per block
assert any(abs(r - 1) > 1e-3 for r in checks['biases kept'])    # biases absorb (or inject) relevance

# VGG: a plain sequence of Conv-BatchNorm-ReLU, so SequentialMergeBatchNorm (or VGGCanonizer on a
# torchvision VGG) is all it needs. Here the first two blocks of VGG-11-BN, embedding = max over positions.
vgg_features = make_layers(cfgs['A'], batch_norm=True)[:8].eval()
print(names(canonizers_for(vgg_features)))  # ['SequentialMergeBatchNorm']
composite = DepthGamma(first='zbox', low=0.0, high=1.0, zero_params=['bias'], canonizers=canonizers_for(vgg_features))
x_a, x_b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
with BiLRP(vgg_features, composite=composite, head='max', similarity='cosine') as bilrp:
    result = bilrp(x_a, x_b, pooling=8, marginals=False)
print(f'VGG: cosine {float(result.similarity):.4f}, relative gap {float(result.delta / result.similarity):.1e}')
assert abs(float(result.delta / result.similarity)) < 1e-3


# The BiLRP paper's own setting: VGG-16 `features` (torchvision layout), a bias-free random projection of the
# flattened maps, ImageNet-normalized pixels. BiLRPGamma gives features[0] z^B with the bounds of normalized
# pixels, the other convolutions LRP-gamma by their index in `features`, the projection LRP-0, biases kept.
class PaperEncoder(torch.nn.Module):
    def __init__(self, units: int = 16):
        super().__init__()
        self.features = make_layers(cfgs['D'])
        for layer in self.features:  # torchvision's VGG initialization
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, mode='fan_out', nonlinearity='relu')
                torch.nn.init.zeros_(layer.bias)
        self.projection = torch.nn.Linear(512, units, bias=False)

    def forward(self, x):
        return self.projection(self.features(x).flatten(1))


encoder = PaperEncoder().eval()
low, high = imagenet_bounds(torch.float32)
pixels_a, pixels_b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
x_a, x_b = (low + p * (high - low) for p in (pixels_a, pixels_b))  # (pixels - mean) / std
with BiLRP(encoder, composite=BiLRPGamma(), similarity='dot') as bilrp:
    result = bilrp(x_a, x_b, pooling=8, marginals=False)
print(f'VGG-16, paper rules: relative gap {float(result.delta / result.similarity):.1e}')
assert abs(float(result.delta / result.similarity)) < 1e-3  # zero biases here: every rule conserves

# Trained networks: merged BatchNorm leaves large biases. On the shipped object-keyed SmallResNet (float64, 6
# synthetic pairs) zeroing them in gamma/LRP-0 rules can empty a denominator; z+ denominators cannot vanish.
trained = load_synthetic_encoder('object', dtype=torch.float64)
pairs = make_pairs(6, seed=0)
trained_a, trained_b = pairs.x_a.double(), pairs.x_b.double()
gaps = {}
for name, composite in {
    "DepthGamma, zero_params=['bias']": DepthGamma(zero_params=['bias'], canonizers=canonizers_for(trained)),
    'DepthGamma, biases kept': DepthGamma(canonizers=canonizers_for(trained)),
    "EpsilonPlus(zero_params=['bias'])": EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(trained)),
}.items():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the amplification warning: measured here instead
        with BiLRP(trained, composite=composite, similarity='cosine') as bilrp:
            result = bilrp(trained_a, trained_b, pooling=8, marginals=False)
    gaps[name] = float((result.delta / result.similarity).abs().max())
    print(f'trained SmallResNet, {name}: max |y - sum R| / |y| = {gaps[name]:.2g}')
assert gaps["EpsilonPlus(zero_params=['bias'])"] < 0.1  # z+ stays close to conserving on the trained network

# The conservation check as a figure: sum R_in / sum phi per composite (log scale; 1 = conserving).
figure = Figure(figsize=(6.4, 2.6))
ax = figure.add_subplot(1, 1, 1)
labels = list(checks)
for row, name in enumerate(labels):
    ax.scatter(checks[name], [row] * len(checks[name]), color='#d62020', zorder=3, s=24, alpha=0.7)
    ax.annotate(' / '.join(f'{r:.3g}' for r in checks[name]), (max(checks[name]), row), xytext=(8, 0),
                textcoords='offset points', va='center', fontsize=8)
ax.axvline(1.0, color='#222222', lw=0.8, ls=':')
ax.set_xlim(0.3, 3000)
ax.set_xscale('log')
ax.set_yticks(range(len(labels)), labels)
ax.set_ylim(len(labels) - 0.5, -0.5)
ax.set_xlabel('sum of input relevance / sum of embedding, both inputs (1 = conserving)')
ax.set_title('conservation on resnet18 (random weights, trained-like BatchNorm statistics)', fontsize=9)
figure.subplots_adjust(left=0.2, right=0.97, bottom=0.2)
save_figure(figure, 'conservation.png')
