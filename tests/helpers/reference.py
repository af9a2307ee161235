"""Brute-force references for the engine tests: one Zennit ``Gradient`` call per embedding unit."""
import torch
from zennit.attribution import Gradient


def per_unit_explanations(model, composite, x, head=None):
    """LRP explanation of every embedding unit, started from its own value: ``(N, h, *x.shape[1:])``.

    One ``zennit.attribution.Gradient`` call (one forward, one backward) per unit, as a Zennit user writes it.
    """
    with torch.no_grad():
        out = model(x)
        emb = out if head is None else head(out)
    h = emb.shape[1]
    explanations = []
    with Gradient(model=model, composite=composite) as attributor:
        for unit in range(h):
            if head is None:
                def seed(output, unit=unit):
                    mask = torch.zeros_like(output)
                    mask[:, unit] = 1.0
                    return output * mask
            else:
                def seed(output, unit=unit):
                    mask = torch.zeros_like(output)
                    mask[:, unit] = 1.0
                    return output * mask / output[0, 0].numel()  # average pooling head
            _, relevance = attributor(x, seed)
            explanations.append(relevance)
    return emb, torch.stack(explanations, dim=1)


def bilrp_full(expl_a, expl_b, weight=None, scale=None):
    """Full pairwise relevance ``(B, d_a, d_b)`` from per-unit explanations ``(B, h, ...)``."""
    fa, fb = expl_a.flatten(2), expl_b.flatten(2)
    if weight is None:
        full = torch.einsum('bmi,bmj->bij', fa, fb)
    else:
        full = torch.einsum('bmi,mn,bnj->bij', fa, weight, fb)
    if scale is not None:
        full = full * scale[:, None, None]
    return full


def pool_full(full, shape_a, shape_b, patch):
    """Sum a full ``(B, d_a, d_b)`` matrix over channels and ``patch x patch`` patches on both sides."""
    b = full.shape[0]
    c, h, w = shape_a
    cp, hp, wp = shape_b
    full = full.reshape(b, c, h // patch, patch, w // patch, patch, cp, hp // patch, patch, wp // patch, patch)
    return full.sum(dim=(1, 3, 5, 6, 8, 10)).reshape(b, (h // patch) * (w // patch), (hp // patch) * (wp // patch))
