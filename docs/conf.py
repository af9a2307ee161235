"""Sphinx configuration of the zennit-bilrp documentation (built-in extensions and theme only).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (``tests/test_docs.py`` runs the same with ``-W``).
"""
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'zennit-bilrp'
author = 'zennit-bilrp contributors'
copyright = '2026, zennit-bilrp contributors'

try:
    from zennit_bilrp import __version__ as release
except ImportError:  # pragma: no cover - the build then fails in autodoc with a clear message
    release = 'unknown'
version = release

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
]

# NumPy-style docstrings, as in Zennit
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {
    'members': True,
    'undoc-members': True,
    'show-inheritance': True,
}

templates_path = []
exclude_patterns = ['_build', 'howto/code']
source_suffix = {'.rst': 'restructuredtext'}
root_doc = 'index'
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_static_path = ['_static']
html_title = f'zennit-bilrp {release}'
html_theme_options = {
    'description': 'Pairwise LRP explanations of similarity models, on Zennit',
    'fixed_sidebar': True,
    'page_width': '1100px',
    'sidebar_width': '240px',
}
html_sidebars = {'**': ['about.html', 'navigation.html', 'searchbox.html']}


def _public_names_directive():
    """``.. public-names::``: a list of links to every name in ``zennit_bilrp.__all__`` (kept current automatically)."""
    import importlib

    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class PublicNames(SphinxDirective):
        has_content = False

        def run(self):
            package = importlib.import_module('zennit_bilrp')
            lines = []
            for name in package.__all__:
                obj = getattr(package, name)
                home = getattr(obj, '__module__', None)
                if not (home or '').startswith('zennit_bilrp.'):  # data: find the module that lists it
                    home = next(f'zennit_bilrp.{mod}' for mod in _modules()
                                if getattr(importlib.import_module(f'zennit_bilrp.{mod}'), name, None) is obj)
                summary = (getattr(obj, '__doc__', None) or '').strip().split('\n')[0] if callable(obj) else ''
                lines.append(f'* :py:obj:`{name} <{home}.{name}>` -- {summary}' if summary else
                             f'* :py:obj:`{name} <{home}.{name}>`')
            node = nodes.container()
            self.state.nested_parse(StringList(lines, source='zennit_bilrp.__all__'), self.content_offset, node)
            return node.children

    return PublicNames


def _modules():
    import pkgutil

    import zennit_bilrp

    return sorted(info.name.removeprefix('zennit_bilrp.')
                  for info in pkgutil.walk_packages(zennit_bilrp.__path__, 'zennit_bilrp.')
                  if not info.ispkg and not info.name.rpartition('.')[2].startswith('_'))


def _skip_class_data(app, what, name, obj, skip, options):
    """Document class attributes through the docstrings' ``Attributes`` sections only (not twice)."""
    import inspect

    if what == 'class' and not (inspect.isroutine(obj) or isinstance(obj, (property, type))):
        return True
    return None


def setup(app):
    app.add_directive('public-names', _public_names_directive())
    app.connect('autodoc-skip-member', _skip_class_data)
    return {'parallel_read_safe': True}
