"""Regenerate the figures and the quoted numbers of the documentation by running the example scripts.

Every picture in ``docs/_static/`` comes from an example, a how-to script or the command-line tool, never drawn by
hand: this script runs them, writing into a scratch folder, and copies the PNGs they produce into ``docs/_static/``
(downscaled to at most ``--max-width`` pixels so that the repository stays small). Numbers quoted in the pages come
from the same run, never typed: the how-to scripts (``docs/howto/code/*.py``) run in the scratch folder and what they
print goes to ``docs/howto/output/<script>.txt``, which the pages include; the method comparison's table and the
sentences quoting it are written to ``docs/howto/output/compare_methods.inc`` from the benchmark's CSV.

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
HOWTO_CODE = ROOT / 'docs' / 'howto' / 'code'
OUTPUT = ROOT / 'docs' / 'howto' / 'output'

#: name -> (command, {file written under {out} (or, starting with 'benchmarks/', under the repository): file name
#: in docs/_static})
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
        [sys.executable, 'examples/neuron_selection.py', '--model', 'vgg', '--out', '{out}', '--skip-demo'],
        {'vgg16_heatmaps.png': 'vgg16_heatmaps.png', 'vgg16_curve.png': 'vgg16_curve.png',
         'vgg16_critical_path.png': 'vgg16_critical_path.png'},
    ),
    'depthwise_rules': (
        [sys.executable, 'examples/depthwise_rules.py', '--out', '{out}'],
        {'depthwise_rules.png': 'depthwise_rules.png'},
    ),
    'text_pair': (
        [sys.executable, '-m', 'zennit_bilrp.app.cli', 'explain-text', 'A cat sits on the mat.',
         'A kitten is sitting on a rug.', '--dpi', '110', '--out', '{out}/text_pair.png'],
        {'text_pair.png': 'text_pair.png'},
    ),
    'text_eval': (
        [sys.executable, 'benchmarks/text_eval.py', '--out', '{out}'],
        {'curves.png': 'text_eval_curves.png'},
    ),
    'alignment_study': (
        [sys.executable, 'examples/alignment_study.py', '--out', '{out}'],
        {'alignment_study.png': 'alignment_study.png'},
    ),
    'retrieval': (
        [sys.executable, 'benchmarks/retrieval.py', '--threads', '1', '--k', '1', '3', '10', '--out', '{out}'],
        {},
    ),
    'vision_tables': (  # the cost and rule-family tables of the vision how-to, from the committed results
        [sys.executable, 'benchmarks/vision_speed.py', '--table', '--out', 'benchmarks/results/vision_cost'],
        {},
    ),
    'rules_study': (  # the rules study on the pretrained Lite0; with its cache in place only the report is redone
        [sys.executable, 'benchmarks/rules_study.py', '--out', 'benchmarks/results/rules_study', '--size224', '3',
         '--timing', '2', '--threads', '2'],
        {'benchmarks/results/rules_study/rules_study.png': 'rules_study.png',
         'benchmarks/results/rules_study/stride_grid.png': 'rules_stride_grid.png',
         'benchmarks/results/rules_study/example_pairs.png': 'rules_example_pairs.png',
         'benchmarks/results/correspondence_randomization/randomization.png': 'rules_randomization.png'},
    ),
    # how-to scripts: run inside {out}; their printed output becomes docs/howto/output/<script>.txt
    'getting_started': (
        [sys.executable, 'docs/howto/code/getting_started.py'],
        {'first_bilrp.png': 'first_bilrp.png'},
    ),
    'many_pairs': (
        [sys.executable, 'docs/howto/code/many_pairs.py'],
        {'retrieval.png': 'many_pairs_retrieval.png'},
    ),
    'from_captum': (
        [sys.executable, 'docs/howto/code/from_captum.py'],
        {'captum_marginal.png': 'captum_marginal.png'},
    ),
    'similarity': (
        [sys.executable, 'docs/howto/code/similarity.py'],
        {'similarities.png': 'similarity_matrices.png'},
    ),
    'composites_canonizers': (
        [sys.executable, 'docs/howto/code/composites_canonizers.py'],
        {'conservation.png': 'composites_conservation.png'},
    ),
    'vision': (
        [sys.executable, 'docs/howto/code/vision.py'],
        {'image_text.png': 'image_text.png', 'image_pair.png': 'vision_image_pair.png'},
    ),
}

#: labels of the methods of benchmarks/compare_methods.py in the docs ('bilrp_depth_gamma' there is the engine's
#: default composite, bilrp_composite(), i.e. the DepthGamma preset, not the paper's VGG preset BiLRPGamma)
METHOD_LABELS = {
    'bilrp_depth_gamma': 'BiLRP, ``depth_gamma`` (the default ``bilrp_composite()``)',
    'bilrp_mobile': 'BiLRP, default rules (``composite_for``: ``MobileEpsilon``)',
    'bilrp_eplus': 'BiLRP, ``EpsilonPlus``',
    'bilrp_epsilon': 'BiLRP, epsilon rule',
    'captum_lrp': 'BiLRP from Captum LRP',
    'saliency_outer': 'Saliency outer product',
    'ixg_outer': 'InputXGradient outer product',
    'ig_outer': 'IntegratedGradients outer product',
    'hessian_product': 'Hessian product',
    'integrated_jac': 'integrated Jacobians',
    'random': 'random',
}


def _number(row: dict, key: str) -> float:
    try:
        return float(row.get(key) or 'nan')
    except ValueError:
        return float('nan')


def compare_methods_rst(csv_path: Path) -> str:
    """The reStructuredText quoting a compare_methods run: a table per dataset and the sentences of the Captum
    how-to, every number read from the benchmark's CSV."""
    import csv
    import math

    with open(csv_path, newline='') as handle:
        rows = [row for row in csv.DictReader(handle) if not row.get('error')]
    lines = ['.. This file is written by docs/make_figures.py from benchmarks/compare_methods.py; do not edit.', '']
    for dataset in dict.fromkeys(row['dataset'] for row in rows):
        sub = [row for row in rows if row['dataset'] == dataset]
        lines += [f'.. list-table:: {dataset}', '   :header-rows: 1', '',
                  '   * - method', '     - pointing game', '     - flip AUC (lower is better)',
                  '     - random order AUC', '     - s / pair']
        for row in sub:
            cells = [METHOD_LABELS.get(row['method'], row['method'])]
            for key, fmt in (('pointing_game', '{:.2f}'), ('flip_auc', '{:.3f}'), ('flip_auc_random_order', '{:.3f}'),
                             ('seconds_per_pair', '{:.3f}')):
                value = _number(row, key)
                cells.append('-' if math.isnan(value) else fmt.format(value))
            lines += [f'   * - {cells[0]}'] + [f'     - {cell}' for cell in cells[1:]]
        lines.append('')
    notes = csv_path.with_suffix('.md')
    if notes.is_file():
        gaps = [line for line in notes.read_text().splitlines() if ': conservation max|y - sum R|' in line]
        device = [line for line in notes.read_text().splitlines() if line.startswith('device:')]
        if gaps:
            lines += ['Conservation, :math:`\\max |y - \\sum R| / \\max |y|` over the pairs of each dataset:', '']
            for line in gaps:
                dataset, _, values = line.partition(': conservation max|y - sum R| / max|y|: ')
                cells = []
                for item in values.split(', '):
                    method, _, value = item.rpartition(' ')
                    cells.append(f'{METHOD_LABELS.get(method, method)} {value}')
                lines.append(f'* ``{dataset}``: ' + '; '.join(cells))
            lines.append('')
        if device:
            lines += [f'Run: {device[0].removeprefix("device: ")}.', '']
    return '\n'.join(lines) + '\n'


def retrieval_rst(json_path: Path) -> str:
    """The sentence of the many-pairs how-to quoting a benchmarks/retrieval.py run (numbers from its JSON)."""
    import json

    summary = json.loads(json_path.read_text())
    settings, rows = summary['settings'], summary['rows']
    dense = next(row for row in rows if row['strategy'] == 'dense')
    top = [row for row in rows if row['strategy'] == 'topk']
    size = 'x'.join(str(v) for v in settings['size'])
    parts = '; '.join(f"top {row['k']}: {row['seconds']:.1f} s, {row['saving']:.1f} times less, "
                      f"{row['factor_computations']} factor computations" for row in top)
    worst = max(row['max_rel_diff'] for row in top)
    return ('.. This file is written by docs/make_figures.py from benchmarks/retrieval.py; do not edit.\n\n'
            f"Measured with ``benchmarks/retrieval.py`` ({settings['gallery']} gallery crops of {size} pixels, the "
            f"demo encoder, {settings['queries']} queries, {summary['machine']['threads']} thread(s), "
            f"{summary['machine']['device']}; wall times on a shared machine, dense: minimum of "
            f"{settings['repeats_dense']} run(s), top k: minimum of {settings['repeats']}): caching every "
            f"factor and pairing densely took {dense['seconds']:.1f} s ({dense['factor_computations']} factor "
            f'computations); ranking by embeddings and explaining only the top matches: {parts}. The explanations '
            f'are the same (largest relative difference {worst:.1e}).\n')


#: labels of the methods of benchmarks/text_eval.py in the docs
TEXT_LABELS = {
    'bilrp_lrp0': 'BiLRP, conservative family (default; LRP-0, NAACL 2024 recipe)',
    'bilrp_attnlrp': 'BiLRP, AttnLRP family (LRP-0)', 'bilrp_gamma': 'BiLRP, conservative, LRP-gamma 0.25',
    'hessian_product': 'Hessian x product', 'saliency_outer': 'gradient outer product (Captum Saliency)',
    'ixg_outer': 'gradient x input outer product', 'ig_outer': 'integrated-gradients outer product',
    'integrated_jac': 'integrated Jacobians (4 steps)', 'random': 'random order',
}


def _list_table(title: str, header: list, rows: list) -> list:
    lines = [f'.. list-table:: {title}', '   :header-rows: 1', '']
    for row in [header] + rows:
        lines += [f'   * - {row[0]}'] + [f'     - {cell}' for cell in row[1:]]
    return lines + ['']


def text_families_rst(folder: Path) -> str:
    """The rule-family comparison on all-MiniLM-L6-v2 (benchmarks/text_eval.py's ``summary.json`` and
    ``results.csv`` in ``folder``) as reStructuredText tables, held-out pairs and all pairs."""
    import csv
    import json

    summary = json.loads((folder / 'summary.json').read_text())
    with open(folder / 'results.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    counts = {split: len({row['pair'] for row in rows if row['split'] == split}) for split in summary['by_split']}
    header = ['method', 'hit@1 (same word / synonym)', 'found in top 3', 'drop@1', 'perturbation AUC (lower is '
              'better)', 's / pair']
    lines = ['.. This file is written by docs/make_figures.py from benchmarks/results/text_families; do not edit.', '']
    for split, title in (('heldout', 'held-out pairs'), ('all', 'all pairs')):
        methods = summary['methods'] if split == 'all' else summary['by_split'][split]
        count = summary['pairs'] if split == 'all' else counts[split]
        table = []
        for method, entry in methods.items():
            kinds = ' / '.join(f"{entry[f'hit@1_{kind}']:.2f}" for kind in ('same', 'synonym'))
            table.append([TEXT_LABELS.get(method, method), f"{entry['hit@1']['mean']:.2f} ({kinds})",
                          f"{entry['found@3']['mean']:.2f}",
                          f"{entry['drop@1']['mean']:.2f} ± {entry['drop@1']['sem']:.2f}",
                          f"{entry['auc']['mean']:.3f} ± {entry['auc']['sem']:.3f}", f"{entry['seconds']['mean']:.2g}"])
        lines += _list_table(f'all-MiniLM-L6-v2, {title} ({count})', header, table)
    ratio = summary['conservation_sumR_over_y']
    free = summary['conservation_bias_free']
    lines += [f"Conservation, :math:`\\sum R / y` over the {summary['pairs']} pairs (mean, range): conservative "
              f"{ratio['lrp0']['mean_sumR_over_y']:.2f} ({ratio['lrp0']['min']:.2f} .. {ratio['lrp0']['max']:.2f}), "
              f"AttnLRP {ratio['attnlrp']['mean_sumR_over_y']:.2f} ({ratio['attnlrp']['min']:.2f} .. "
              f"{ratio['attnlrp']['max']:.2f}); with the encoder's biases set to zero ({free['pairs']} pairs, "
              f"{free['dtype']}) the largest relative gap :math:`|y - \\sum R| / |y|` is "
              f"{free['max_relative_gap_conservative']:.1e} (conservative) and "
              f"{free['max_relative_gap_attnlrp']:.2f} (AttnLRP). Seconds per pair: {summary['note']}, "
              f"{summary['torch_threads']} torch thread(s).", '']
    return '\n'.join(lines) + '\n'


def vision_cost_rst(folder: Path) -> str:
    """The cost of exact BiLRP on vision transformers (every ``<setting>_<family>.json`` of
    benchmarks/vision_speed.py in ``folder``) as a reStructuredText table."""
    import json
    import statistics

    runs = [json.loads(path.read_text()) for path in sorted(folder.glob('*_*.json'))]
    runs = [run for run in runs if not run['setting'].startswith('tiny')]
    for run in runs:  # the paired ratio: exact and floor timed one after the other, under the same load
        run['exact_over_floor'] = statistics.median(run['exact_over_floor_per_run'])
    header = ['setting', 'rule family', 'passes the plan chose (per tower)', 'exact s / pair (median; min)',
              'floor: min(h, P) plain VJPs (s)', 'exact / floor', 'h-pass path / exact']
    table = []
    for run in sorted(runs, key=lambda r: (r['setting'] != 'vit_b16', r['family'] != 'conservative')):
        plans = '; '.join(f"{p['tower']}: {'patch-major' if p['path'] == 'patches' else 'unit-major'} "
                          f"{p['passes']} (h = {p['h']}, P = {p['patches']})" for p in run['plans'])
        ratio = f"{run['unit_major_over_exact']:.0f}x" if run.get('unit_major') else '-'
        table.append([run['setting'], run['family'], plans, f"{run['exact_median']:.1f} ({run['exact_min']:.1f})",
                      f"{run['floor']['seconds']:.1f}", f"{run['exact_over_floor']:.2f}x", ratio])
    lines = ['.. This file is written by docs/make_figures.py from benchmarks/results/vision_cost; do not edit.', '']
    lines += _list_table('exact BiLRP of one pair, random weights', header, table)
    if runs:
        loads = [value for run in runs for value in (run['load_average_before'][0], run['load_average_after'][0])]
        first = runs[0]
        nice = {run.get('nice') for run in runs}
        known = len(nice) == 1 and None not in nice
        priority = f'; the benchmark ran at nice {nice.pop()}, below them' if known else ''
        repeats = sorted({len(run['exact_seconds']) for run in runs})
        busy = max(loads) > first['threads'] + 0.5  # more load than the benchmark's own threads
        machine = (f'shared with other jobs (load average {min(loads):.1f} to {max(loads):.1f} on 2 cores){priority}, '
                   'so the seconds are upper bounds and the ratios the comparable numbers' if busy else
                   f'otherwise idle (load average {min(loads):.1f} to {max(loads):.1f} on 2 cores, the benchmark '
                   'itself included)')
        lines += [f"Run: {first['device']}, {first['threads']} torch threads, {first['dtype']}, torch "
                  f"{first['torch']}, {' or '.join(map(str, repeats))} timed run(s) per row; the floor was timed "
                  'right after each exact run and exact / floor is the median of these paired ratios. The machine '
                  f'was {machine}.', '']
    return '\n'.join(lines) + '\n'


#: columns of the rules study's table in the docs: (header, key in summary.json's rows, format)
RULES_COLUMNS = (('pointing 32 ↑', 'pointing_32', '{:.2f}'), ('pointing 16 ↑', 'pointing_16', '{:.2f}'),
                 ('pointing 32, IJ subset ↑', 'pointing_32_subset', '{:.2f}'),
                 ('error 32 (px) ↓', 'error_px_32', '{:.1f}'),
                 ('gain over own marginals 32', 'pointing_gain_32', '{:+.2f}'),
                 ('top singular share ↓', 'singular_share_32', '{:.2f}'), ('sum R / y', 'conservation', '{:.3f}'),
                 ('max abs(sum R / y)', 'amplification', '{:.3g}'), ('stride-grid energy', 'grid2', '{:.3f}'))


def rules_study_rst(folder: Path) -> str:
    """The rules study's table (benchmarks/rules_study.py's ``summary.json`` in ``folder``) as reStructuredText:
    one row per candidate, baseline and control, with the candidate descriptions and the controlled timing."""
    import json
    import math

    summary = json.loads((folder / 'summary.json').read_text())
    descriptions = summary['descriptions']

    def cell(row, key, spec):
        value = row.get(key)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return '-'
        text = spec.format(value)
        return f'**{text}**' if row.get('default') else text

    table = [[f"``{row['method']}``" + (' (default)' if row.get('default') else ''), str(row['pairs'])]
             + [cell(row, key, spec) for _, key, spec in RULES_COLUMNS] for row in summary['table']]
    settings = summary['settings']
    lines = ['.. This file is written by docs/make_figures.py from benchmarks/results/rules_study; do not edit.', '']
    lines += _list_table(f"pretrained EfficientNet-Lite0, {settings['pairs']} pairs at "
                         f"{settings['size'][0]} x {settings['size'][1]} px, top-{settings['k']} patch pairs",
                         ['method', 'pairs'] + [head for head, _, _ in RULES_COLUMNS], table)
    chance = summary['chance']
    lines += [f"Chance pointing: {chance['32']:.3f} (32-px patches), {chance['16']:.3f} (16-px patches). Subset "
              f"(where integrated Jacobians ran): pairs {settings['subset']}.", '']
    lines += [f'* ``{name}``: {text.replace("**", "")}' for name, text in descriptions.items()] + ['']
    timing = summary.get('timing')
    if timing:
        parts = '; '.join(f'{patch}-px patches: ' + ', '.join(f'``{name}`` {value:.1f} s' for name, value in
                                                             seconds.items())
                          for patch, seconds in timing['seconds'].items())
        lines += [f"Time per pair, measured in one process with the methods interleaved pair by pair (median over "
                  f"{len(timing['pairs'])} pairs, {timing['threads']} torch threads, "
                  f"{timing['ij_steps']} integrated-Jacobians steps): {parts}.", '']
    return '\n'.join(lines) + '\n'


def rules_findings_rst(folder: Path) -> str:
    """The sentences of the rules how-to that quote the rules study (``summary.json`` in ``folder``): the default
    against the previous default and the best baseline, the issue's targets as measured."""
    import json

    summary = json.loads((folder / 'summary.json').read_text())
    rows = {row['method']: row for row in summary['table']}
    targets = summary['targets']
    default, previous = rows[f"bilrp_{targets['default']}"], rows.get('bilrp_zplus', {})
    subset = summary['settings']['subset']

    def fmt(row, key, spec='{:.2f}'):
        value = row.get(key)
        return '-' if value is None else spec.format(value)

    yes = {True: 'met', False: '**not met**'}
    full = [r for r in summary['table'] if r['method'] in ('hessian_product', 'integrated_jac')
            and r['pairs'] == summary['settings']['pairs']]
    lines = ['.. This file is written by docs/make_figures.py from benchmarks/results/rules_study; do not edit.', '']
    parts = []
    for patch in (32, 16):
        ours = default.get(f'pointing_{patch}', float('nan'))
        best = max(full, key=lambda r: r.get(f'pointing_{patch}', -1))
        theirs = best.get(f'pointing_{patch}', float('nan'))
        ours_sub = default.get(f'pointing_{patch}_subset', float('nan'))
        ij_sub = rows['integrated_jac'].get(f'pointing_{patch}_subset', float('nan'))
        parts.append(f"{patch}-px patches: {ours:.2f} against {theirs:.2f} for ``{best['method']}`` on all "
                     f"{best['pairs']} pairs ({yes[ours >= theirs]}), {ours_sub:.2f} against {ij_sub:.2f} for "
                     f"integrated Jacobians on their {len(subset)} pairs ({yes[ours_sub >= ij_sub]})")
    lines += [f"* Pointing of the default (``{targets['default']}``) against the best baseline, on the same pairs: "
              f"{'; '.join(parts)}. The previous default (:math:`z^+` everywhere) points at "
              f"{fmt(previous, 'pointing_32')} and {fmt(previous, 'pointing_16')}.",
             f"* Specificity: the top singular direction of :math:`F` holds {fmt(default, 'singular_share_32')} of "
             f"its energy under the default against {fmt(previous, 'singular_share_32')} under :math:`z^+` (target "
             f"at most 0.5: {yes[targets['top_singular_share_at_most_0.5']]}); BiLRP points "
             f"{fmt(default, 'pointing_gain_32', '{:+.2f}')} better than the outer product of its own marginals "
             f"(:math:`z^+`: {fmt(previous, 'pointing_gain_32', '{:+.2f}')}).",
             f"* The price is conservation: :math:`\\sum R / y` = {fmt(default, 'conservation', '{:.2f}')} on average "
             f"(the biases and :math:`\\epsilon` of the top layers absorb the rest; :math:`z^+`: "
             f"{fmt(previous, 'conservation', '{:.4f}')}), and no pair is amplified (largest "
             f":math:`|\\sum R| / |y|` = {fmt(default, 'amplification', '{:.2f}')}).",
             f"* Stride grid: the period-2 energy of the marginals is {fmt(default, 'grid2', '{:.3f}')} under the "
             f"default against {fmt(previous, 'grid2', '{:.3f}')} under :math:`z^+` with the strided "
             ":math:`z^{\\mathcal{B}}`."]
    timing = summary.get('timing')
    if timing:
        parts = []
        for patch, seconds in timing['seconds'].items():
            ratio = seconds[f"bilrp_{targets['default']}"] / seconds['integrated_jac']
            parts.append(f"{patch}-px patches {seconds['bilrp_' + targets['default']]:.1f} s against "
                         f"{seconds['integrated_jac']:.1f} s (1/{1 / ratio:.0f})")
        lines.append(f"* Time per pair of the default against integrated Jacobians ({timing['ij_steps']} steps), "
                     f"timed in one process: {'; '.join(parts)}; target at most 1/20.")
    rows224 = [row for row in summary['table'] if row['method'].endswith('_224')]
    if rows224:
        lines.append('* At 224 x 224 px (32-px patches, ' + str(summary['settings']['size224_pairs']) + ' pairs): '
                     + ', '.join(f"``{row['method']}`` pointing {fmt(row, 'pointing_32')}" for row in rows224) + '.')
    return '\n'.join(lines) + '\n'


def rules_randomization_rst(folder: Path) -> str:
    """The sentence of the rules how-to that quotes the cascading randomization (``randomization.csv``)."""
    import csv

    with open(folder / 'randomization.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    curves = {}
    for row in rows:
        curves.setdefault(row['method'], {})[int(row['randomized'])] = float(row['spearman'])
    steps = [s for s in (1, 2, 3, 6) if all(s in c for c in curves.values())]
    parts = [f"``{method}`` " + ' / '.join(f'{curve[s]:.2f}' for s in steps) for method, curve in curves.items()]
    return ('.. This file is written by docs/make_figures.py from benchmarks/results/correspondence_randomization; '
            'do not edit.\n\n'
            f"Rank correlation after {' / '.join(map(str, steps))} randomized blocks: {'; '.join(parts)}. An "
            'explanation that stays close to 1 while the weights are replaced does not explain the weights.\n')


def run_howto(script: Path, out: Path) -> str:
    """Run a how-to script inside ``out``; return (and echo) what it prints."""
    result = subprocess.run([sys.executable, str(script)], cwd=out, check=True, stdout=subprocess.PIPE, text=True)
    print(result.stdout, end='')
    return result.stdout


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
        script = ROOT / command[-1]
        if script.parent == HOWTO_CODE:
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / f'{script.stem}.txt').write_text(run_howto(script, out))
            print(f'  -> docs/howto/output/{script.stem}.txt')
        else:
            subprocess.run(command, cwd=ROOT, check=True)
        if name == 'retrieval':
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / 'retrieval.inc').write_text(retrieval_rst(out / 'retrieval.json'))
            print('  -> docs/howto/output/retrieval.inc')
        if name == 'vision_tables':
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / 'vision_cost.inc').write_text(vision_cost_rst(ROOT / 'benchmarks' / 'results' / 'vision_cost'))
            (OUTPUT / 'text_families.inc').write_text(
                text_families_rst(ROOT / 'benchmarks' / 'results' / 'text_families'))
            print('  -> docs/howto/output/vision_cost.inc, text_families.inc')
        if name == 'compare_methods':
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / 'compare_methods.inc').write_text(compare_methods_rst(out / 'compare_methods.csv'))
            print('  -> docs/howto/output/compare_methods.inc')
        if name == 'rules_study':
            OUTPUT.mkdir(parents=True, exist_ok=True)
            results = ROOT / 'benchmarks' / 'results'
            (OUTPUT / 'rules_study.inc').write_text(rules_study_rst(results / 'rules_study'))
            (OUTPUT / 'rules_findings.inc').write_text(rules_findings_rst(results / 'rules_study'))
            (OUTPUT / 'rules_randomization.inc').write_text(
                rules_randomization_rst(results / 'correspondence_randomization'))
            print('  -> docs/howto/output/rules_study.inc, rules_findings.inc, rules_randomization.inc')
        for produced, dest in files.items():
            source = ROOT / produced if produced.startswith('benchmarks/') else out / produced
            if not source.is_file():
                raise FileNotFoundError(f'{name}: the example did not write {source}')
            copy_png(source, STATIC / dest, args.max_width)
            print(f'  -> docs/_static/{dest}')
        print(f'  ({time.perf_counter() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
