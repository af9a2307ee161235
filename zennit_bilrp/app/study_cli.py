"""The ``zennit-bilrp study merge|summarize OUT_DIR`` commands: the table steps of
:class:`~zennit_bilrp.analysis.study.ContextStudy`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .cli_support import CLIError, user_errors, warn

__all__ = ['add_study_parser', 'study']


def study(args: argparse.Namespace) -> Path:
    """Run ``zennit-bilrp study merge|summarize OUT_DIR``: merge the per-rank ``pairs*.csv`` files into
    ``pairs.csv``, or write ``summary.csv`` (means, bootstrap intervals, paired differences per model)."""
    from ..analysis.study import merge_results, read_results, summarize, write_summary

    if not os.path.isdir(args.out_dir):
        raise CLIError(f'study output folder {args.out_dir!r} does not exist')
    if args.study_command == 'merge':
        with user_errors(FileNotFoundError):
            path = merge_results(args.out_dir)
        print(path)
        return Path(path)
    if args.n_boot < 1:
        raise CLIError(f'--n-boot must be positive, got {args.n_boot}')
    rows = read_results(args.out_dir)
    if not rows:
        raise CLIError(f'no result rows in {args.out_dir!r} (expected pairs*.csv files written by ContextStudy)')
    models = list(dict.fromkeys(row['model'] for row in rows))
    if args.baseline is not None and args.baseline not in models:
        raise CLIError(f'--baseline {args.baseline!r} is not among the models of the results: {", ".join(models)}')
    missing = [metric for metric in args.metrics if metric not in rows[0]]
    if len(missing) == len(args.metrics):
        raise CLIError(f'none of the metrics {", ".join(args.metrics)} is a column of the results')
    if missing:
        warn(f'metrics not in the results, skipped: {", ".join(missing)}')
    records = summarize(rows, args.metrics, args.baseline, args.n_boot)
    path = write_summary(records, os.path.join(args.out_dir, 'summary.csv'))
    for record in records:
        print(f"{record['kind']:18s} {record['metric']:26s} {record['model']:22s} {record['mean']:+.4f} "
              f"[{record['ci_low']:+.4f}, {record['ci_high']:+.4f}]  n={record['n']}"
              + (f"  p={record['wilcoxon_p']:.2g}" if record['kind'] == 'paired_difference' else ''))
    print(path)
    return Path(path)


def add_study_parser(sub) -> None:
    """Add the ``study`` sub-command (``merge`` and ``summarize``) to the ``zennit-bilrp`` sub-parsers ``sub``."""
    from ..analysis.study import DEFAULT_METRICS

    st = sub.add_parser('study', help='merge and summarize the per-pair results of a context study',
                        description='The table steps of zennit_bilrp.analysis.study.ContextStudy.')
    commands = st.add_subparsers(dest='study_command', required=True, metavar='{merge,summarize}')
    merge = commands.add_parser('merge', help='merge the per-rank pairs*.csv files into OUT_DIR/pairs.csv')
    merge.add_argument('out_dir', metavar='OUT_DIR', help='the output folder of the study')
    summary = commands.add_parser('summarize', help='write OUT_DIR/summary.csv: means, bootstrap intervals and '
                                                    'paired differences per model')
    summary.add_argument('out_dir', metavar='OUT_DIR', help='the output folder of the study')
    summary.add_argument('--baseline', default=None,
                         help='model the others are compared with (default: the first model in the results)')
    summary.add_argument('--metrics', nargs='+', default=list(DEFAULT_METRICS), metavar='METRIC',
                         help=f'result columns to summarize (default: {" ".join(DEFAULT_METRICS)})')
    summary.add_argument('--n-boot', type=int, default=2000, help='bootstrap resamples (default 2000)')
    st.set_defaults(run=study)
