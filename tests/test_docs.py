"""The documentation stays honest: every how-to's code runs, the Sphinx build passes with warnings as errors,
every public name is in the API reference, and every figure comes from ``docs/make_figures.py``."""
import importlib
import pickle
import re
import runpy
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

import zennit_bilrp

matplotlib.use('Agg')

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'
CODE = DOCS / 'howto' / 'code'
SNIPPETS = sorted(CODE.glob('*.py'))
#: how-to scripts that need an optional extra: (module it needs, the extra)
SNIPPET_EXTRAS = {'text': ('transformers', 'text'), 'vision': ('transformers', 'vision')}
RST = sorted(DOCS.rglob('*.rst'))


def package_modules():
    import pkgutil

    return sorted(info.name.removeprefix('zennit_bilrp.')
                  for info in pkgutil.walk_packages(zennit_bilrp.__path__, 'zennit_bilrp.')
                  if not info.ispkg and not info.name.rpartition('.')[2].startswith('_'))


def literal_includes():
    """(rst file, included path) for every ``literalinclude`` in the docs."""
    found = []
    for rst in RST:
        for match in re.finditer(r'^\s*\.\. literalinclude::\s*(\S+)', rst.read_text(), flags=re.M):
            found.append((rst, (rst.parent / match.group(1)).resolve()))
    return found


@pytest.mark.parametrize('path', SNIPPETS, ids=[p.stem for p in SNIPPETS])
def test_howto_code_runs(path, tmp_path, monkeypatch, capsys):
    """Each how-to's code runs as shown (its asserts are the properties the guide is about)."""
    import matplotlib.pyplot as plt

    if path.stem in SNIPPET_EXTRAS:
        module, extra = SNIPPET_EXTRAS[path.stem]
        pytest.importorskip(module, reason=f"the [{extra}] extra is not installed: pip install 'zennit-bilrp[{extra}]'")
    monkeypatch.chdir(tmp_path)  # anything a snippet writes lands in a scratch folder
    monkeypatch.setattr(sys, 'argv', [str(path)])
    dtype, rng, threads = torch.get_default_dtype(), torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(1)  # the snippets are tiny: threads only add overhead (and spin on a busy machine)
    try:
        runpy.run_path(str(path), run_name='__main__')
    finally:
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng)
        torch.set_num_threads(threads)
        plt.close('all')


def test_every_snippet_is_shown_and_every_include_exists():
    included = {path for _, path in literal_includes()}
    for rst, path in literal_includes():
        assert path.is_file(), f'{rst.relative_to(ROOT)} includes {path}, which does not exist'
    missing = [p.name for p in SNIPPETS if p.resolve() not in included]
    assert not missing, f'how-to code not shown in any page: {missing}'
    assert len(SNIPPETS) >= 3


@pytest.fixture(scope='module')
def built_docs(tmp_path_factory):
    """Build the docs in-process with ``sphinx-build -W --keep-going`` (dummy builder); return (status, warnings,
    the pickled build environment). Skipped, naming the extra, where Sphinx is not installed."""
    pytest.importorskip('sphinx', reason="the [docs] extra (sphinx) is not installed: pip install 'zennit-bilrp[docs]'")
    from sphinx.cmd.build import build_main

    out = tmp_path_factory.mktemp('docs')
    warnings = out / 'warnings.txt'
    status = build_main(['-W', '--keep-going', '-q', '-E', '-b', 'dummy', '-w', str(warnings),
                         '-d', str(out / 'doctrees'), str(DOCS), str(out / 'dummy')])
    environment = None
    pickled = out / 'doctrees' / 'environment.pickle'
    if pickled.is_file():
        with open(pickled, 'rb') as handle:
            environment = pickle.load(handle)
    return status, warnings.read_text() if warnings.is_file() else '', environment


def test_sphinx_build_without_warnings(built_docs):
    status, warnings, _ = built_docs
    assert status == 0 and not warnings.strip(), f'sphinx-build -W failed (status {status}):\n{warnings}'


def documented_objects(environment) -> set:
    return set(environment.domaindata['py']['objects'])


def test_every_module_has_an_api_page():
    for module in package_modules():
        page = DOCS / 'api' / (module.replace('.', '/') + '.rst')
        assert page.is_file(), f'zennit_bilrp.{module} has no API page: add {page.relative_to(ROOT)} and list it ' \
                               'in docs/api/index.rst'
        assert f'.. automodule:: zennit_bilrp.{module}' in page.read_text()


def test_every_public_name_is_in_the_api_reference(built_docs):
    """Every name in each module's ``__all__`` and in ``zennit_bilrp.__all__`` is documented (a py object)."""
    objects = documented_objects(built_docs[2])
    missing = []
    homes = {}
    for module in package_modules():
        mod = importlib.import_module(f'zennit_bilrp.{module}')
        assert hasattr(mod, '__all__'), f'zennit_bilrp.{module} has no __all__'
        for name in mod.__all__:
            homes.setdefault(name, []).append((module, getattr(mod, name)))
            if f'zennit_bilrp.{module}.{name}' not in objects:
                missing.append(f'zennit_bilrp.{module}.{name}')
    for name in zennit_bilrp.__all__:
        obj = getattr(zennit_bilrp, name)
        if not any(f'zennit_bilrp.{module}.{name}' in objects for module, other in homes.get(name, []) if other is obj):
            missing.append(f'zennit_bilrp.{name}')
    assert not missing, f'public names missing from the API reference: {missing}'
    assert 'zennit_bilrp.core.engine.BiLRP.explain' in objects  # methods are documented too


def test_figures_come_from_make_figures():
    """Every image the docs show is a file in docs/_static that docs/make_figures.py produces from an example."""
    spec = runpy.run_path(str(DOCS / 'make_figures.py'), run_name='make_figures')
    produced = set(spec['static_files']())
    shown = set()
    for rst in RST:
        for match in re.finditer(r'^\s*\.\. (?:image|figure)::\s*(\S+)', rst.read_text(), flags=re.M):
            path = (rst.parent / match.group(1)).resolve()
            assert path.parent == (DOCS / '_static').resolve(), f'{rst.name}: images belong in docs/_static/'
            shown.add(path.name)
    assert shown, 'the docs show no figure'
    assert shown <= produced, f'figures not produced by docs/make_figures.py: {sorted(shown - produced)}'
    for name in shown:
        assert (DOCS / '_static' / name).stat().st_size < 1_000_000, f'{name} is too large for the repository'
    for name, (command, _) in spec['FIGURES'].items():
        script = next((part for part in command if part.endswith('.py')), None)
        assert script is None or (ROOT / script).is_file(), f'figure {name}: {script} does not exist'


def test_readme_links_the_docs():
    readme = (ROOT / 'README.md').read_text()
    section = readme.split('<!-- section:docs -->')[1].split('<!-- /section:docs -->')[0]
    assert 'docs/' in section and 'sphinx-build' in section


def test_architecture_names_every_module_and_only_existing_ones():
    """docs/architecture.rst stays true to the code: each module is named in it (by file name or, in a listed
    folder, by stem), and each ``name.py`` it names exists in the package."""
    text = (DOCS / 'architecture.rst').read_text()
    tree = text.split('.. code-block:: text', 1)[1].split('What flows between', 1)[0]  # the package's layout
    files = {path.name for path in (ROOT / 'zennit_bilrp').rglob('*.py')}
    named = set(re.findall(r'\b(\w+\.py)\b', tree))
    assert not named - files, f'architecture.rst names modules that do not exist: {sorted(named - files)}'
    words = set(re.findall(r'\w+', tree))
    missing = [module for module in package_modules() if module.rpartition('.')[2] not in words]
    assert not missing, f'modules missing from docs/architecture.rst: {missing}'
