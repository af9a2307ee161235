"""Import the repository's scripts (benchmarks/, examples/), which are not part of the package, as modules."""
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(folder: str, name: str) -> ModuleType:
    """``<folder>/<name>.py`` of the repository, imported as a fresh module named ``<folder>_<name>``."""
    spec = importlib.util.spec_from_file_location(f'{folder}_{name}', ROOT / folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
