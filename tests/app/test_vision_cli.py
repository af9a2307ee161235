"""``zennit-bilrp explain-image-text`` and ``explain-images`` end to end on tiny random models saved to temporary
folders (with tokenizer and image processor, loaded offline): the figure, CSV and NPZ are written and agree with the
library; bad inputs (missing folder or image, a model that is not image-text, no image processor) are refused with
clear messages."""
import csv

import numpy as np
import pytest
import torch

transformers = pytest.importorskip('transformers', minversion='5',
                    reason="the [vision] extra (transformers 5) is not installed: pip install 'zennit-bilrp[vision]'")

from zennit_bilrp.app.cli import build_parser, main  # noqa: E402
from zennit_bilrp.app.cli_support import CLIError  # noqa: E402
from zennit_bilrp.app.vision_cli import run_explain_image_text, run_explain_images  # noqa: E402
from zennit_bilrp.models.clip import ImageTextExplanation, explain_image_text, load_image_text_model  # noqa: E402

from helpers.vision_models import tiny_image_text, tiny_tokenizer, tiny_vision  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')


def run(argv):
    args = build_parser().parse_args(argv)
    return args.run(args)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """Model folders as save_pretrained writes them: CLIP and SigLIP (tokenizer, image processor), CLIP without an
    image processor, a ViT (not image-text) and a DINOv2 with its processor."""
    made = {}
    for kind, processor in (('clip', transformers.CLIPImageProcessor(size={'shortest_edge': 8},
                                                                      crop_size={'height': 8, 'width': 8})),
                            ('siglip', transformers.SiglipImageProcessor(size={'height': 8, 'width': 8}))):
        folder = tmp_path_factory.mktemp(kind)
        tiny_image_text(kind, seed=6).float().save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        processor.save_pretrained(folder)
        made[kind] = folder
    made['no_processor'] = tmp_path_factory.mktemp('no_processor')
    tiny_image_text('clip', seed=6).float().save_pretrained(made['no_processor'])
    tiny_tokenizer().save_pretrained(made['no_processor'])
    made['vit'] = tmp_path_factory.mktemp('vit')
    tiny_vision('vit').float().save_pretrained(made['vit'])
    made['dinov2'] = tmp_path_factory.mktemp('dinov2')
    tiny_vision('dinov2_registers', seed=3).float().save_pretrained(made['dinov2'])
    transformers.BitImageProcessor(size={'shortest_edge': 8}, crop_size={'height': 8, 'width': 8}).save_pretrained(
        made['dinov2'])
    return made


@pytest.fixture(scope='module')
def photos(image_files):
    return image_files([(20, 24), (16, 16)], seed=3, prefix='photo')


@pytest.mark.parametrize('kind', ['clip', 'siglip'])
def test_explain_image_text_end_to_end(kind, folders, photos, tmp_path, capsys):
    out, table, saved = tmp_path / 'fig.png', tmp_path / 'pairs.csv', tmp_path / 'pair.npz'
    written = run(['explain-image-text', photos[0], 'a photo of a cat', '--model', str(folders[kind]), '--out',
                   str(out), '--csv', str(table), '--save-relevance', str(saved), '--top-k', '5', '--dpi', '60',
                   '--note', 'random weights', '--family', 'attnlrp'])
    assert written == out and out.stat().st_size > 5000
    printed = capsys.readouterr()
    assert 'cosine similarity' in printed.out and 'patch (' in printed.out and 'cost estimate' in printed.err
    loaded = ImageTextExplanation.load(saved)
    assert loaded.grid == (2, 2) and loaded.caption == 'a photo of a cat'
    # the same explanation as the library's, from the same folder and image
    from PIL import Image

    model = load_image_text_model(folders[kind])
    expected = explain_image_text(model, Image.open(photos[0]).convert('RGB'), 'a photo of a cat', family='attnlrp')
    assert torch.allclose(loaded.relevance, expected.relevance, rtol=1e-5, atol=1e-9)
    rows = list(csv.reader(open(table)))
    assert rows[0][1:3] == ['0:<start>', '1:a'] and [row[0] for row in rows[1:]] == ['0 0', '0 1', '1 0', '1 1']
    assert np.allclose(np.array([[float(v) for v in row[1:]] for row in rows[1:]]), expected.relevance.numpy(),
                       rtol=1e-4, atol=1e-9)


def test_explain_images_end_to_end(folders, photos, tmp_path, capsys):
    out, saved = tmp_path / 'images.svg', tmp_path / 'images.npz'
    run(['explain-images', photos[0], photos[1], '--model', str(folders['dinov2']), '--out', str(out),
         '--save-relevance', str(saved), '--pooling', 'mean', '--top-k', '3'])
    assert out.read_text().startswith('<?xml')
    assert 'cosine similarity' in capsys.readouterr().out
    from zennit_bilrp.core.results import BiLRPResult

    result = BiLRPResult.load(saved)
    assert result.relevance.shape == (1, 4, 4) and result.grid_a.patch == (4, 4)  # the model's 4-pixel patches


@pytest.mark.parametrize('argv, message', [
    (['--model', '/nonexistent/folder'], 'is not a folder'),
    (['--out', 'fig.gif'], 'must end in one of'),
    (['--top-k', '0'], '--top-k must be positive'),
    (['--save-relevance', 'x.pt'], 'must end in .npz'),
])
def test_argument_errors(argv, message, folders, photos):
    argv = ['explain-image-text', photos[0], 'a cat', '--model', str(folders['clip'])] + argv
    with pytest.raises(CLIError, match=message):
        run(argv)


def test_model_and_input_errors(folders, photos, tmp_path):
    with pytest.raises(CLIError, match='no config.json'):
        run(['explain-image-text', photos[0], 'a cat', '--model', str(tmp_path), '--out', str(tmp_path / 'x.png')])
    with pytest.raises(CLIError, match='not a two-tower image-text model'):
        run(['explain-image-text', photos[0], 'a cat', '--model', str(folders['vit']), '--out',
             str(tmp_path / 'x.png')])
    with pytest.raises(CLIError, match='has no image processor'):
        run(['explain-image-text', photos[0], 'a cat', '--model', str(folders['no_processor']), '--out',
             str(tmp_path / 'x.png')])
    with pytest.raises(CLIError, match='does not exist'):
        run(['explain-image-text', str(tmp_path / 'missing.png'), 'a cat', '--model', str(folders['clip'])])
    not_image = tmp_path / 'notes.png'
    not_image.write_text('not an image')
    with pytest.raises(CLIError, match='cannot read'):
        run(['explain-image-text', str(not_image), 'a cat', '--model', str(folders['clip'])])
    with pytest.raises(CLIError, match='caption is empty'):
        run(['explain-image-text', photos[0], '  ', '--model', str(folders['clip'])])
    with pytest.raises(CLIError, match='has no image processor'):
        run(['explain-images', photos[0], photos[1], '--model', str(folders['vit']), '--out', str(tmp_path / 'x.png')])
    with pytest.raises(CLIError, match='has no class token'):
        run(['explain-images', photos[0], photos[1], '--model', str(folders['siglip']), '--out',
             str(tmp_path / 'x.png'), '--pooling', 'cls'])


def test_main_prints_the_error(folders, photos, capsys):
    assert main(['explain-image-text', photos[0], 'a cat', '--model', '/nonexistent']) == 2
    assert 'zennit-bilrp: error: --model' in capsys.readouterr().err


def test_commands_are_registered():
    parser = build_parser()
    assert parser.parse_args(['explain-image-text', 'a.png', 'x', '--model', 'm']).run is run_explain_image_text
    assert parser.parse_args(['explain-images', 'a.png', 'b.png', '--model', 'm']).run is run_explain_images
