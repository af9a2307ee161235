"""Figures of token-by-token explanations: what is drawn (lines, colors, labels, shared scales) and bad input."""
import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use('Agg')

from zennit_bilrp.app.text_viz import plot_text_bilrp, plot_text_matrix, plot_text_pairs, plot_text_stack  # noqa
from zennit_bilrp.app.viz import THEMES, save_figure  # noqa: E402


class Explanation:
    def __init__(self, relevance, tokens_a, tokens_b, similarity=0.5):
        self.relevance = torch.as_tensor(relevance, dtype=torch.float64)
        self.tokens_a, self.tokens_b, self.similarity = tokens_a, tokens_b, similarity


@pytest.fixture
def explanation():
    relevance = np.zeros((4, 5))
    relevance[1, 2] = 0.4
    relevance[2, 3] = -0.2
    relevance[0, 0] = 0.05
    return Explanation(relevance, ['[CLS]', 'cat', 'sits', '[SEP]'], ['[CLS]', 'a', 'kitten', 'sat', '[SEP]'])


def test_pairs_lines_colors_and_widths(explanation):
    import matplotlib.pyplot as plt

    ax = plot_text_pairs(explanation, k=2)
    lines = ax.get_lines()
    assert len(lines) == 2
    colors = {matplotlib.colors.to_hex(line.get_color()): line.get_linewidth() for line in lines}
    assert colors[THEMES['light']['positive']] > colors[THEMES['light']['negative']]  # width by |R|
    texts = [t.get_text() for t in ax.texts]
    assert 'kitten' in texts and 'cat' in texts and 'A' in texts and 'B' in texts
    plt.close('all')


def test_hide_special_and_matrix_labels(explanation):
    import matplotlib.pyplot as plt

    ax = plot_text_matrix(explanation, hide_special=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ['a', 'kitten', 'sat']
    assert [t.get_text() for t in ax.get_yticklabels()] == ['cat', 'sits']
    image = ax.get_images()[0]
    assert image.get_clim() == pytest.approx((-0.4, 0.4))  # symmetric scale
    plt.close('all')


def test_bilrp_figure_and_stack(explanation, tmp_path):
    import matplotlib.pyplot as plt

    fig = plot_text_bilrp(explanation, k=3, hide_special=True)
    assert 'y = 0.500' in fig._suptitle.get_text() and 'without special tokens' in fig._suptitle.get_text()
    assert save_figure(fig, tmp_path / 'fig.png').stat().st_size > 5000
    weaker = Explanation(explanation.relevance * 0.5, explanation.tokens_a, explanation.tokens_b)
    stack = plot_text_stack([explanation, weaker], k=1)
    widths = [ax.get_lines()[0].get_linewidth() for ax in stack.axes]
    assert widths[0] > widths[1]  # shared scale: the weaker pair's strongest line is thinner
    plt.close('all')


def test_bad_input(explanation):
    with pytest.raises(ValueError, match='does not fit'):
        plot_text_pairs(Explanation(np.zeros((2, 2)), ['a'], ['b', 'c']))
    with pytest.raises(ValueError, match='k must be positive'):
        plot_text_pairs(explanation, k=0)
    with pytest.raises(ValueError, match='no tokens left'):
        plot_text_matrix(Explanation(np.zeros((1, 1)), ['[CLS]'], ['[SEP]']), hide_special=True)
