"""How-to: choose a composite and canonizers for ResNet and VGG encoders, and check conservation."""
import torch
from torchvision.models import resnet18
from torchvision.models.vgg import cfgs, make_layers
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer

from zennit_bilrp import BiLRP, BiLRPGamma, canonizers_for

torch.manual_seed(0)

# --- ResNet: torchvision's resnet18 with the 512 pooled features as the embedding (random weights here).
model = resnet18()
model.fc = torch.nn.Identity()
for module in model.modules():  # give BatchNorm non-trivial statistics, as in a trained network
    if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 2.0)
model.eval()
x = torch.rand(2, 3, 32, 32)


def conservation(composite):
    """Total input relevance / total output relevance for one LRP pass of sum_m phi_m (1.0 = conserving)."""
    with BiLRP(model, composite=composite) as bilrp:
        embedding, relevance = bilrp.propagate(x, torch.ones(1, 512), pooling=8)  # relevance: (1, N, P)
    return (relevance.sum(dim=-1)[0] / embedding.sum(dim=1)).tolist()


print(canonizers_for(model))  # [ResNetCanonizer()]: BatchNorm merge + a Sum module for `out += identity`
checks = {
    'recommended': conservation(EpsilonPlus(zero_params=['bias'], canonizers=[ResNetCanonizer()])),
    'no canonizer': conservation(EpsilonPlus(zero_params=['bias'])),
    'biases kept': conservation(EpsilonPlus(canonizers=[ResNetCanonizer()])),
    'BiLRPGamma': conservation(BiLRPGamma(zero_params=['bias'], canonizers=canonizers_for(model))),
}
for name, ratio in checks.items():
    print(f'{name:>13}: sum R_in / sum phi = {ratio[0]:.4f}, {ratio[1]:.4f}')

assert all(abs(r - 1) < 1e-3 for r in checks['recommended'])
assert all(abs(r - 1) < 2e-2 for r in checks['BiLRPGamma'])      # LRP-gamma: conserves up to ~1% here
assert all(r > 100 for r in checks['no canonizer'])            # the skip connection doubles relevance per block
assert any(abs(r - 1) > 1e-3 for r in checks['biases kept'])    # biases absorb (or inject) relevance

# --- VGG: a plain sequence of Conv-BatchNorm-ReLU, so SequentialMergeBatchNorm (or VGGCanonizer on a
# torchvision VGG) is all it needs. Here the first two blocks of VGG-11-BN, embedding = max over positions.
vgg_features = make_layers(cfgs['A'], batch_norm=True)[:8].eval()
print(canonizers_for(vgg_features))  # [SequentialMergeBatchNorm()]
composite = BiLRPGamma(first='zbox', low=0.0, high=1.0, zero_params=['bias'], canonizers=canonizers_for(vgg_features))
x_a, x_b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
with BiLRP(vgg_features, composite=composite, head='max', similarity='cosine') as bilrp:
    result = bilrp(x_a, x_b, pooling=8, marginals=False)
print('VGG: cosine', float(result.similarity), 'relative gap', float(result.delta / result.similarity))
assert abs(float(result.delta / result.similarity)) < 1e-3
