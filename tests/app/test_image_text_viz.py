"""The image-caption figure: what is drawn (one heatmap panel per token on one color scale with one colorbar, a line
per top patch-token pair from the patch center to the token, red/blue, width by |R|), padding merged, token
selection, bad input; and the image-image picture (plot_bilrp) on a vision transformer's own patch grid."""
from dataclasses import dataclass

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use('Agg')

from zennit_bilrp.app.viz import THEMES, plot_bilrp, save_figure  # noqa: E402
from zennit_bilrp.app.viz.image_text import display_token, plot_image_text, token_columns  # noqa: E402


@dataclass
class Explanation:
    relevance: torch.Tensor
    tokens: list
    grid: tuple = (2, 3)
    patch_size: tuple = (4, 4)
    image: torch.Tensor = None
    similarity: float = 0.3
    caption: str = 'a cat'

    def __post_init__(self):
        if self.image is None:
            rows, cols = self.grid
            generator = torch.Generator().manual_seed(0)
            self.image = torch.rand(3, rows * self.patch_size[0], cols * self.patch_size[1], generator=generator)


@pytest.fixture
def explanation():
    """2 x 3 patches, 5 tokens; the strongest pair is patch 4 (row 1, col 1) with 'cat' (+0.5), then patch 0 with
    'a' (-0.3), then patch 2 with '<EOT>' (+0.1)."""
    relevance = torch.zeros(6, 5, dtype=torch.float64)
    relevance[4, 2] = 0.5
    relevance[0, 1] = -0.3
    relevance[2, 4] = 0.1
    relevance[5, 3] = 0.01
    return Explanation(relevance, ['<|startoftext|>', 'a</w>', 'cat</w>', 'mat</w>', '<|endoftext|>'])


def axes(fig, prefix):
    return [ax for ax in fig.axes if ax.get_label().startswith(prefix)]


def test_token_panels_share_one_color_scale_and_one_colorbar(explanation):
    fig = plot_image_text(explanation, k=3)
    panels = axes(fig, 'token_')
    assert [ax.get_label() for ax in panels] == [f'token_{i}' for i in range(5)]
    limits = {ax.get_images()[-1].get_clim() for ax in panels}  # the heatmap is drawn over the gray image
    assert limits == {(-0.5, 0.5)}  # symmetric, the largest |R| of all tokens
    assert len(axes(fig, 'colorbar')) == 2  # the panels' one colorbar and the patch marginal's
    titles = [ax.get_title() for ax in panels]
    assert titles[2] == 'cat: +0.5' and titles[0].startswith('<SOT>') and titles[4].startswith('<EOT>')
    heat = panels[2].get_images()[-1].get_array()
    assert heat.shape == (8, 12) and heat[4:, 4:8].min() == pytest.approx(0.5) and np.abs(heat).sum() == 0.5 * 16
    marginal = axes(fig, 'patch_marginal')[0].get_images()[-1].get_array()
    assert marginal[0, 0] == pytest.approx(-0.3) and marginal[4, 4] == pytest.approx(0.5)


def test_lines_join_patch_centers_and_tokens(explanation):
    fig = plot_image_text(explanation, k=3)
    pairs = axes(fig, 'pairs')[0]
    lines = pairs.get_lines()
    assert len(lines) == 3
    strongest = lines[-1]  # drawn last, on top
    assert matplotlib.colors.to_hex(strongest.get_color()) == THEMES['light']['positive']
    assert strongest.get_xdata()[0] == pytest.approx(5.5) and strongest.get_ydata()[0] == pytest.approx(5.5)
    negative = lines[-2]
    assert matplotlib.colors.to_hex(negative.get_color()) == THEMES['light']['negative']
    assert (negative.get_xdata()[0], negative.get_ydata()[0]) == pytest.approx((1.5, 1.5))
    assert strongest.get_linewidth() > negative.get_linewidth() > lines[0].get_linewidth()  # width by |R|
    token_y = sorted({line.get_ydata()[1] for line in lines})
    assert len(token_y) == 3 and all(line.get_xdata()[1] > 12 for line in lines)  # they end at the token column
    assert [t.get_text() for t in pairs.texts] == ['<SOT>', 'a', 'cat', 'mat', '<EOT>']
    assert len(plot_image_text(explanation, k=1).axes[0].get_lines()) == 1


def test_title_states_similarity_total_and_note(explanation):
    fig = plot_image_text(explanation, k=2, note='random weights')
    text = '\n'.join(t.get_text() for t in fig.texts)
    assert '"a cat"' in text and 'y = 0.300' in text and 'sum of R = 0.310' in text and 'random weights' in text
    assert '2 strongest' in text
    custom = plot_image_text(explanation, title='my title')
    assert 'my title' in [t.get_text() for t in custom.texts]


def test_trailing_padding_is_merged_and_summed(explanation, tmp_path):
    relevance = torch.cat([explanation.relevance, torch.full((6, 3), 0.02, dtype=torch.float64)], dim=1)
    padded = Explanation(relevance, explanation.tokens + ['<pad>'] * 3)
    view = token_columns(padded)
    assert view.labels[-1] == '<pad> ×3' and view.positions[-1] == [5, 6, 7]
    assert np.allclose(view.matrix[:, -1], 0.06) and view.matrix.sum() == pytest.approx(float(relevance.sum()))
    assert len(token_columns(padded, merge_repeats=False).labels) == 8
    fig = plot_image_text(padded, k=2)
    assert [ax.get_label() for ax in axes(fig, 'token_')][-1] == 'token_5'
    assert save_figure(fig, tmp_path / 'padded.png').stat().st_size > 5000


def test_token_selection_and_panel_limit(explanation):
    fig = plot_image_text(explanation, tokens=[2, 4])
    assert [ax.get_label() for ax in axes(fig, 'token_')] == ['token_2', 'token_4']
    assert {ax.get_images()[-1].get_clim() for ax in axes(fig, 'token_')} == {(-0.5, 0.5)}
    limited = plot_image_text(explanation, max_panels=2)
    assert [ax.get_label() for ax in axes(limited, 'token_')] == ['token_1', 'token_2']  # the strongest, in order
    assert any('2 of 5 token columns' in t.get_text() for t in limited.texts)


def test_dark_background_and_display_tokens(explanation):
    fig = plot_image_text(explanation, background='dark', colorbar=False)
    assert matplotlib.colors.to_hex(fig.get_facecolor()) == THEMES['dark']['face']
    assert not axes(fig, 'colorbar')
    assert [display_token(t) for t in ('cat</w>', 'Ġcat', '▁cat', '<|endoftext|>', '[CLS]', '</w>')] == [
        'cat', 'cat', 'cat', '<EOT>', '[CLS]', "'</w>'"]


def test_bad_input(explanation):
    with pytest.raises(ValueError, match='does not fit 2 x 3 patches and 4 tokens'):
        plot_image_text(Explanation(explanation.relevance, explanation.tokens[:4]))
    with pytest.raises(ValueError, match='covers 8 x 12'):
        plot_image_text(Explanation(explanation.relevance, explanation.tokens, image=torch.rand(3, 8, 8)))
    with pytest.raises(ValueError, match='k must be positive'):
        plot_image_text(explanation, k=0)
    with pytest.raises(ValueError, match="by must be"):
        plot_image_text(explanation, by='largest')
    with pytest.raises(ValueError, match='not positions'):
        plot_image_text(explanation, tokens=[7])
    with pytest.raises(ValueError, match='straight lines'):
        plot_image_text(explanation, style='paper')
    with pytest.raises(ValueError, match='NaN'):
        plot_image_text(Explanation(explanation.relevance * float('nan'), explanation.tokens))


@pytest.mark.usefixtures('single_thread')
def test_image_pairs_on_a_vision_transformer_patch_grid():
    """plot_bilrp draws explain_images results on the model's own grid: line ends at the centers of its 4-pixel
    patches."""
    pytest.importorskip('transformers', minversion='5',
                    reason="the [vision] extra (transformers 5) is not installed: pip install 'zennit-bilrp[vision]'")
    from zennit_bilrp.lrp.towers import ImageEncoder
    from zennit_bilrp.models.vision import explain_images

    from helpers.vision_models import tiny_vision

    encoder = ImageEncoder(tiny_vision('dinov2_registers', seed=2, image_size=16))
    generator = torch.Generator().manual_seed(1)
    x_a, x_b = (torch.rand(1, 3, 16, 16, generator=generator, dtype=torch.float64) for _ in range(2))
    result = explain_images(encoder, x_a, x_b, marginals=False)
    fig = plot_bilrp(result, x_a, x_b, k=5)
    lines = axes(fig, 'pairs')[0].get_lines()
    assert len(lines) == 5
    ends = np.array([[line.get_xdata()[0], line.get_ydata()[0]] for line in lines])
    assert set(np.unique(ends)) <= {1.5, 5.5, 9.5, 13.5}  # patch centers of the 4 x 4 grid of 4-pixel patches
