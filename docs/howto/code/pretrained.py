"""Explain your own pretrained model: a torchvision weights file on disk, its preprocessing, an embedding layer,
canonizers and the rules for mobile networks. Runs offline in seconds (a random MobileNetV3 stands in for the
weights you downloaded once)."""
import numpy as np
import torch
from skimage import data
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

from zennit_bilrp import BiLRP
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.composites import mobile_composite

# 1. The weights file. On a machine with internet, save it once:
#        torch.save(mobilenet_v3_small(weights='IMAGENET1K_V1').state_dict(), 'mobilenet_v3_small.pth')
#    Here a randomly initialized model stands in for it, with BatchNorm statistics of random images (with the
#    initial statistics its activations vanish and there is nothing to explain).
torch.manual_seed(0)
stand_in = mobilenet_v3_small()
for module in stand_in.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
        module.momentum = None  # cumulative average over the calibration batches
with torch.no_grad():
    stand_in.train()(torch.rand(16, 3, 96, 96) * 4 - 2)
torch.save(stand_in.state_dict(), 'mobilenet_v3_small.pth')
model = mobilenet_v3_small()
model.load_state_dict(torch.load('mobilenet_v3_small.pth', map_location='cpu', weights_only=True))
model.eval()

# 2. The preprocessing that belongs to the weights (no download: it is a transform object). Smaller crops than
#    the 224 px the weights were trained on keep this example fast.
preprocess = MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms(crop_size=96, resize_size=110)
cat = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1)
x_a = preprocess(cat)[None]
x_b = preprocess(cat.flip(-1))[None]

# 3. The embedding: the pooled 576-d features before the classifier.
model.classifier = torch.nn.Identity()

# 4. Canonizers and rules: canonizers_for picks the inverted-residual canonizer (BatchNorm merge, residual sums,
#    constant squeeze-and-excitation gates); mobile_composite gives z^B on ImageNet-normalized pixels, z+ in the
#    convolutions and z+-else-w^2 in the depthwise convolutions, so that relevance is conserved.
print([type(c).__name__ for c in canonizers_for(model)])
composite = mobile_composite(model)

with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
    result = bilrp(x_a, x_b, pooling=32)
y, total = float(result.similarity[0]), float(result.relevance.sum())
print(f'cosine y = {y:.4f}, sum R = {total:.4f}')
assert abs(total - y) < 0.02 * abs(y)  # conservation
