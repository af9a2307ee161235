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


def calibrate_batch_norms(model: torch.nn.Module, seed: int, size: int, zero_shift: bool = False) -> torch.nn.Module:
    """Give every ``BatchNorm2d`` random affine parameters and the statistics of random inputs, as in a trained
    network (so that activations depend on the input and merged biases have a realistic size), and ``eps`` ~ 0 (the
    per-unit Zennit reference keeps merged layers' ``x / sqrt(1 + eps)``, the engine removes it).

    Draws from a generator seeded with ``seed``, in the model's dtype: per module ``weight`` ~ U(0.5, 1.5) and
    ``bias`` ~ N(0, 0.1^2), then one training-mode forward pass of 8 random ``size`` x ``size`` images. With
    ``zero_shift`` every merged bias is zero afterwards (``running_mean = beta = 0``). Returns the model in eval mode.
    """
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen, dtype=dtype) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen, dtype=dtype) * 0.1)
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, size, size, generator=gen, dtype=dtype))
    for bn in norms:
        bn.eps = 1e-12
        if zero_shift:
            bn.running_mean.zero_()
            bn.bias.data.zero_()
    return model.eval()
