"""Regenerate the figures of the documentation by running the example scripts.

Every picture in ``docs/_static/`` comes from an example or the command-line tool, never drawn by hand: this
script runs them, writing into a scratch folder, and copies the PNGs they produce into ``docs/_static/``
(downscaled to at most ``--max-width`` pixels so that the repository stays small).

Usage::

    python docs/make_figures.py                     # all figures
    python docs/make_figures.py --only demo         # some of them
    python docs/make_figures.py --list              # what would run
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / 'docs' / '_static'

#: name -> (command, {file written under {out}: file name in docs/_static})
FIGURES = {
    'demo': (
        [sys.executable, '-m', 'zennit_bilrp.app.cli', 'demo', '--dpi', '90', '--out', '{out}/bilrp_demo.png'],
        {'bilrp_demo.png': 'bilrp_demo.png'},
    ),
    'compare_methods': (
        [sys.executable, 'benchmarks/compare_methods.py', '--out', '{out}'],
        {'compare_methods.png': 'compare_methods.png'},
    ),
    'speed': (
        [sys.executable, 'benchmarks/speed.py', '--threads', '1', '--out', '{out}'],
        {'error_vs_cost.png': 'speed_error_vs_cost.png'},
    ),
    'iri_demo': (
        [sys.executable, 'examples/iri_demo.py', '--out', '{out}'],
        {'iri_demo.png': 'iri_demo.png'},
    ),
    'neuron_selection': (
        [sys.executable, 'examples/neuron_selection.py', '--out', '{out}', '--skip-demo'],
        {'vgg16_heatmaps.png': 'vgg16_heatmaps.png', 'vgg16_curve.png': 'vgg16_curve.png',
         'vgg16_critical_path.png': 'vgg16_critical_path.png'},
    ),
    'alignment_study': (
        [sys.executable, 'examples/alignment_study.py', '--out', '{out}'],
        {'alignment_study.png': 'alignment_study.png'},
    ),
}


def static_files() -> dict:
    """Map each file name in ``docs/_static`` that this script produces to the figure that produces it."""
    return {dest: name for name, (_, files) in FIGURES.items() for dest in files.values()}


def copy_png(source: Path, dest: Path, max_width: int) -> None:
    """Copy a PNG, downscaled to ``max_width`` pixels if it is wider (needs Pillow; copied as is without)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        shutil.copyfile(source, dest)
        return
    with Image.open(source) as image:
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        image.save(dest, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', nargs='+', choices=sorted(FIGURES), help='figures to make (default: all)')
    parser.add_argument('--out', default='out/docs_figures', help='scratch folder for the examples\' outputs')
    parser.add_argument('--max-width', type=int, default=1400, help='downscale wider PNGs to this width')
    parser.add_argument('--list', action='store_true', help='print the commands and exit')
    args = parser.parse_args(argv)
    names = args.only or sorted(FIGURES)
    STATIC.mkdir(parents=True, exist_ok=True)
    for name in names:
        command, files = FIGURES[name]
        out = (ROOT / args.out / name).resolve()
        command = [part.replace('{out}', str(out)) for part in command]
        if args.list:
            print(name + ':', ' '.join(command))
            continue
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f'[{name}]', ' '.join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        for produced, dest in files.items():
            source = out / produced
            if not source.is_file():
                raise FileNotFoundError(f'{name}: the example did not write {source}')
            copy_png(source, STATIC / dest, args.max_width)
            print(f'  -> docs/_static/{dest}')
        print(f'  ({time.perf_counter() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
