"""The README's Captum snippet runs verbatim on torchvision resnet18, after the README's usage block."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / 'README.md'


def python_block(text: str, heading: str) -> str:
    """The first ```python block of the README section that starts with ``heading``."""
    start = text.find(f'\n{heading}\n')
    assert start >= 0, f'README has no section {heading!r}'
    end = text.find('\n## ', start + len(heading) + 2)
    section = text[start:end if end >= 0 else len(text)]
    match = re.search(r'```python\n(.*?)```', section, re.DOTALL)
    assert match, f'README section {heading!r} has no python block'
    return match.group(1)


def run_readme(text: str) -> dict:
    """Execute the usage block, then the Captum block (with ``x, x_ref`` the usage block's ``x_a, x_b``)."""
    namespace = {'__name__': 'readme'}
    exec(compile(python_block(text, '## Usage'), 'README.md (Usage)', 'exec'), namespace)
    namespace.setdefault('x', namespace['x_a'])
    namespace.setdefault('x_ref', namespace['x_b'])
    exec(compile(python_block(text, '## Captum'), 'README.md (Captum)', 'exec'), namespace)
    return namespace


def check_readme(text: str) -> None:
    """The snippets run and their results are what the README's comments say."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ns = run_readme(text)
    finally:
        torch.set_num_threads(threads)
    x, result = ns['x'], ns['result']
    assert ns['heat'].shape == x.shape
    scale = float(result.marginal_a.abs().max())
    assert torch.allclose(ns['heat'], result.marginal_a, rtol=1e-4, atol=1e-5 * scale)  # the engine's numbers
    batch, patches = x.shape[0], (x.shape[2] // 16) * (x.shape[3] // 16)
    assert ns['pairs'].shape == (batch, patches, patches)
    assert ns['delta'].shape == (batch,)
    assert ns['smooth'].shape == x.shape


@pytest.mark.slow  # resnet18 at 32x32, 512 units, explained several times (NoiseTunnel: 4 samples)
def test_readme_captum_snippet_runs_verbatim():
    check_readme(README.read_text())
