"""The package surface: every exported name resolves, and the README's usage example runs as written."""
import re
from pathlib import Path

import torch

import zennit_bilrp

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves():
    for name in zennit_bilrp.__all__:
        assert getattr(zennit_bilrp, name) is not None, name
    assert set(zennit_bilrp.__all__) <= set(dir(zennit_bilrp))


def test_readme_usage_example_runs():
    readme = (ROOT / 'README.md').read_text()
    code = re.search(r'## Usage\n\n```python\n(.*?)```', readme, re.S).group(1)
    namespace = {}
    exec(compile(code, 'README.md', 'exec'), namespace)
    result = namespace['result']
    assert result.relevance.shape == (1, 16, 16)
    assert namespace['heat_a'].shape == (1, 3, 32, 32)
    assert len(namespace['top'].values[0]) == 10
    assert float(result.delta.abs()[0]) < 1e-3 * float(result.similarity[0])
    assert torch.isfinite(result.relevance).all()
