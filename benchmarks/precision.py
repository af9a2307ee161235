"""Error of exact BiLRP in reduced precision against float64, for both exact paths (unit-major and patch-major).

Usage::

    python benchmarks/precision.py [--device cpu] [--out benchmarks/results/precision_cpu.json]

The trained demo model (h = 96) explains its demo pair at 64 x 96 with 16-pixel patches (P = 24), cosine
similarity; the relative Frobenius error of the pooled relevance against float64 is written to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from zennit_bilrp import BiLRP
from zennit_bilrp.models.demo import demo_composite, load_demo_model, load_demo_pair


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default='benchmarks/results/precision_cpu.json')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model64 = load_demo_model().double().to(device)
    x_a, x_b = (x.double().to(device) for x in load_demo_pair((64, 96)))

    def explain(model, dtype, method):
        engine = BiLRP(model, composite=demo_composite(model), similarity='cosine', method=method)
        return engine.explain(x_a.to(dtype), x_b.to(dtype), pooling=16, marginals=False).relevance.double()

    reference = explain(model64, torch.float64, 'batched')
    errors = {}
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == 'cuda' else [])
    for dtype in dtypes:
        model = copy.deepcopy(model64).to(dtype)
        for method in ('batched', 'patches'):
            relevance = explain(model, dtype, method)
            errors[f'{str(dtype)[6:]} {"unit-major" if method == "batched" else "patch-major"}'] = float(
                (relevance - reference).norm() / reference.norm())
    patch64 = explain(model64, torch.float64, 'patches')
    errors['float64 patch-major'] = float((patch64 - reference).norm() / reference.norm())
    result = {'model': 'demo (trained), 64x96, 16-px patches (P=24), h=96, cosine similarity',
              'device': str(device), 'threads': torch.get_num_threads(), 'torch': torch.__version__,
              'relative_frobenius_error_vs_float64_unit_major': errors}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
