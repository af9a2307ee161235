"""How-to: BiLRP from Captum -- the BiLRPAttribution class with Captum's tooling, and the Captum-LRP cross-check."""
import torch
from captum.attr import NoiseTunnel, visualization
from captum.metrics import infidelity, infidelity_perturb_func_decorator, sensitivity_max
from skimage import data
from torch import nn
from zennit.composites import EpsilonPlus

from zennit_bilrp import canonizers_for
from zennit_bilrp.interop.captum_adapter import BiLRPAttribution
from zennit_bilrp.interop.captum_lrp import captum_bilrp, zennit_epsilon_composite
from zennit_bilrp.models.demo import to_tensor
from zennit_bilrp.models.small_resnet import SmallResNet

torch.manual_seed(0)
model = SmallResNet(widths=(8, 16)).eval()
# explain y(x[i], x_ref[i]) for two pairs of 32 x 32 photo crops: a cat and a shifted crop of it, coffee and a rocket
cat, coffee, rocket = data.chelsea(), data.coffee(), data.rocket()
x = torch.cat([to_tensor(cat[0:300, 100:400], (32, 32)), to_tensor(coffee[0:400, 100:500], (32, 32))])
x_ref = torch.cat([to_tensor(cat[30:330, 140:440], (32, 32)), to_tensor(rocket[0:427, 100:527], (32, 32))])

# Construct it like a Captum method: the model (or a forward function) first, then the LRP rules.
explainer = BiLRPAttribution(model, composite=EpsilonPlus(zero_params=['bias']), canonizers=canonizers_for(model),
                             similarity='cosine')

# Marginal (default): shaped exactly like the inputs, so Captum tooling works on it unchanged.
heat, delta = explainer.attribute(x, partner=x_ref, return_convergence_delta=True)
assert heat.shape == x.shape and delta.shape == (2,)          # delta = y - sum(R) per pair
# Pairwise: the pooled patch-by-patch relevance (B, P_a, P_b); pair=True takes the pair (x_a, x_b) as inputs.
pairs = explainer.attribute((x, x_ref), pair=True, output='pairwise', pooling=4)
assert pairs.shape == (2, 64, 64)
assert torch.allclose(pairs.sum(dim=(1, 2)), heat.flatten(1).sum(1), rtol=1e-4)   # same total
# Captum's compute_convergence_delta(attributions, start_point, end_point): LRP has no baseline, start_point is None.
assert torch.allclose(explainer.compute_convergence_delta(heat, None, x, partner=x_ref), delta, atol=1e-6)
# Inputs the forward needs but that are not explained go to additional_forward_args, called as f(x, *args) like in
# Captum (for a module as for a function); a tuple of several inputs is not a pair unless pair=True.
mask = torch.ones(2, 1, 32, 32).index_fill_(3, torch.arange(16), 0.0)  # one 0/1 mask per pair: left half hidden


def masked(inputs, keep):
    return model(inputs * keep)


hidden = BiLRPAttribution(masked, composite=EpsilonPlus(zero_params=['bias']), canonizers=canonizers_for(model),
                          similarity='cosine').attribute(x, partner=x_ref, additional_forward_args=mask)
assert float(hidden[..., :16].abs().max()) == 0.0                    # nothing hidden is relevant

# Captum's NoiseTunnel (SmoothGrad over the inputs; the partner stays fixed) ...
smooth = NoiseTunnel(explainer).attribute(x, partner=x_ref, nt_type='smoothgrad', nt_samples=4, stdevs=0.05)
assert smooth.shape == x.shape


# ... infidelity, with the similarity as forward function ...
@infidelity_perturb_func_decorator(multiply_by_inputs=True)
def perturb(inputs):
    return inputs - 0.05 * torch.randn_like(inputs)


score = infidelity(explainer.similarity_function(x_ref), perturb, x, heat, n_perturb_samples=4)
# ... sensitivity_max, with attribute as the explanation function (extra keywords go to attribute) ...
sensitivity = sensitivity_max(explainer.attribute, x, n_perturb_samples=2, partner=x_ref)
print('infidelity', [round(v, 6) for v in score.tolist()], 'sensitivity', [round(v, 4) for v in sensitivity.tolist()])
# ... and Captum's image visualization of the marginal (random weights: the map shows the API, not a trained model).
figure, axis = visualization.visualize_image_attr(heat[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(),
                                                  method='blended_heat_map', sign='all', use_pyplot=False,
                                                  show_colorbar=True, title='BiLRP marginal of x[0] (cat crop)')
figure.savefig('captum_marginal.png', dpi=100, bbox_inches='tight')

# Cross-check against BiLRP assembled from captum.attr.LRP (one Captum call per embedding unit) on a model where
# both libraries' rules coincide: epsilon everywhere, no BatchNorm, no skip connection.
class PlainCNN(nn.Module):
    """Only layers Captum's LRP has rules for (it refuses nn.Flatten, so flatten in forward)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1, stride=2, bias=False), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, inputs):
        return torch.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(inputs))))), 1)


cnn = PlainCNN().double().eval()
x64, ref64 = x.double(), x_ref.double()
reference = captum_bilrp(cnn, x64, ref64, similarity='dot', pooling=4)
ours = BiLRPAttribution(cnn, composite=zennit_epsilon_composite()).attribute(x64, partner=ref64, output='pairwise',
                                                                            pooling=4)
error = float((ours - reference).norm() / reference.norm())
print(f'relative difference to Captum-LRP BiLRP: {error:.1e}')
assert error < 1e-5
