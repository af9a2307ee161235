"""Small helpers that prepare test models."""
import torch


@torch.no_grad()
def random_batch_norm_statistics(model: torch.nn.Module, affine: bool = False, bias: bool = False) -> torch.nn.Module:
    """Give every ``BatchNorm2d`` non-trivial statistics from the global RNG, so that merging it matters.

    Per module, in this order: ``running_mean`` ~ U(-0.2, 0.2), ``running_var`` ~ U(0.5, 1.5), and with ``affine``
    ``weight`` ~ U(0.5, 1.5), with ``bias`` also ``bias`` ~ U(-0.1, 0.1). Seed with ``torch.manual_seed`` first.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            if affine:
                module.weight.uniform_(0.5, 1.5)
                if bias:
                    module.bias.uniform_(-0.1, 0.1)
    return model
