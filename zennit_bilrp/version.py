"""The package version, in one place (``setup.cfg`` reads it with ``attr:``; nothing here imports the package)."""

__all__ = ['__version__']

#: the version of zennit-bilrp (PEP 440)
__version__ = '0.1.0'
