"""The package's layering and its use of torch internals, read from the source (ast).

Layers, lowest first (docs/architecture.rst): ``version``/``torch_private`` < ``lrp`` < ``core`` <
``interop``/``scale``/``analysis``/``models`` < ``app`` < the package root. A module may import its own layer and
the ones below, never one above; Captum is imported in ``interop`` alone, matplotlib in ``app`` alone; torch's private
attributes are read in ``torch_private.py`` alone.
"""
import ast
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / 'zennit_bilrp'

LAYERS = {'version': 0, 'torch_private': 0, 'lrp': 1, 'core': 2, 'interop': 3, 'scale': 3, 'analysis': 3,
          'models': 3, 'app': 4, '__init__': 5}

#: known violations (module, imported module): none; add one here only with the reason it must stay
KNOWN: set = set()


def modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def layer_of(name: str) -> int:
    parts = name.split('.')
    if len(parts) == 1:
        return LAYERS['__init__']
    return LAYERS[parts[1]]


def imports(name: str, path: Path, tree: ast.AST):
    """Absolute names of every module imported anywhere in the file (also inside functions)."""
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            yield base
            for alias in node.names:  # `from . import x` may import a module
                yield f'{base}.{alias.name}'


def known(name: str, target: str) -> bool:
    return any(name == module and (target == other or target.startswith(other + '.')) for module, other in KNOWN)


def own_module(target: str) -> bool:
    return target == 'zennit_bilrp' or target.startswith('zennit_bilrp.')


def test_every_module_has_a_layer():
    for name, _, _ in modules():
        layer_of(name)  # raises KeyError for a folder the layering does not know


def test_no_module_imports_from_a_higher_layer():
    problems = []
    for name, path, tree in modules():
        for target in set(imports(name, path, tree)):
            if not own_module(target) or known(name, target):
                continue
            parts = target.split('.')
            if len(parts) > 1 and parts[1] not in LAYERS and (PACKAGE / parts[1]).exists() is False:
                continue  # `from . import name` of a non-module name
            if layer_of(target) > layer_of(name):
                problems.append(f'{name} imports {target}')
    assert not problems, 'imports from a higher layer:\n' + '\n'.join(sorted(problems))


@pytest.mark.parametrize('library, allowed', [('captum', 'interop'), ('matplotlib', 'app')])
def test_optional_libraries_stay_in_their_layer(library, allowed):
    problems = []
    for name, path, tree in modules():
        for target in set(imports(name, path, tree)):
            if target.split('.')[0] != library or known(name, target):
                continue
            if name.split('.')[1:2] != [allowed]:
                problems.append(f'{name} imports {target}')
    assert not problems, f'{library} outside {allowed}/:\n' + '\n'.join(sorted(problems))


def torch_private_names() -> set:
    """Private attribute names of torch's modules, layers, tensors and autograd nodes (and a few known ones)."""
    layer = torch.nn.Conv2d(1, 1, 1)
    node = (torch.ones(1, requires_grad=True) * 2).grad_fn
    names = set(dir(layer)) | set(vars(layer)) | set(dir(torch.Tensor)) | set(dir(node)) | set(dir(torch))
    names |= {'_conv_forward', '_forward_cls', '_sequence_nr', '_C', '_functorch', '_remove_batch_dim'}
    return {n for n in names if n.startswith('_') and not n.startswith('__')}


def dotted(node: ast.AST) -> str:
    """``'torch.nn.modules'`` for the expression ``torch.nn.modules`` ('' for anything but a chain of names)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return '.'.join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else ''


def private_uses(tree: ast.AST, private: set) -> list:
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith('_') and not node.attr.startswith('__')
                and dotted(node.value).split('.')[0] == 'torch'):
            found.append(f'line {node.lineno}: {dotted(node.value)}.{node.attr}')  # e.g. torch.nn.modules.conv._ConvNd
        elif isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ('self', 'cls'):
                continue  # the class's own attribute
            found.append(f'line {node.lineno}: .{node.attr}')
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ''] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for module in names:
                parts = module.split('.')
                if parts[0] == 'torch' and any(part.startswith('_') for part in parts[1:]):
                    found.append(f'line {node.lineno}: import {module}')
    return found


def test_torch_private_attributes_are_read_in_one_module_only():
    private = torch_private_names()
    problems = []
    for name, _, tree in modules():
        if name == 'zennit_bilrp.torch_private':
            assert private_uses(tree, private), 'torch_private.py should be where the private names are'
            continue
        problems += [f'{name} {use}' for use in private_uses(tree, private)]
    assert not problems, 'torch private attributes outside zennit_bilrp/torch_private.py:\n' + '\n'.join(problems)


def test_the_private_scan_finds_what_it_looks_for():
    tree = ast.parse('import torch.utils._python_dispatch\nmodule._forward_hooks\nconv._conv_forward(x)\n'
                     'self._parameters\nisinstance(m, torch.nn.modules.batchnorm._BatchNorm)\ntorch.nn.Module\n')
    assert len(private_uses(tree, torch_private_names())) == 4
