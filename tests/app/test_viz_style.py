"""The style object of the pair figures (PairStyle: the old keywords and the object draw the same thing, bad fields
are named) and the figures that moved out of analysis/ (selection curve, reconstructions), checked by content."""
import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from zennit_bilrp.analysis.neurons import SelectionCurve
from zennit_bilrp.analysis.reconstruction import Reconstruction
from zennit_bilrp.app.viz import (
    THEMES,
    PairStyle,
    draw_pairs,
    plot_bilrp,
    plot_bilrp_stack,
    plot_pair_grid,
    plot_reconstructions,
    plot_selection_curve,
    select_pairs,
)

matplotlib.use('Agg')


def _axis(fig, label):
    (ax,) = [ax for ax in fig.axes if ax.get_label() == label]
    return ax


def _drawn(fig, label='pairs'):
    """What the pairs axes shows: per line (x, y, width, alpha, color) and the two images' pixels."""
    ax = _axis(fig, label)
    lines = [(tuple(np.round(line.get_xdata(), 9)), tuple(np.round(line.get_ydata(), 9)), line.get_linewidth(),
              line.get_alpha(), to_rgb(line.get_color())) for line in ax.lines]
    return lines, [np.asarray(image.get_array()) for image in ax.images]


def test_keywords_and_style_object_draw_the_same(result):
    res, x_a, x_b = result
    fields = {'background': 'dark', 'fade': 0.5, 'linewidth': (1.0, 3.0), 'alpha': (0.2, 0.8), 'curve': 0.1,
              'colorbar': False}
    by_keywords = plot_bilrp(res, x_a, x_b, index=1, k=6, **fields)
    by_style = plot_bilrp(res, x_a, x_b, index=1, k=6, style=PairStyle(**fields))
    lines, images = _drawn(by_keywords)
    assert lines == _drawn(by_style)[0]
    for one, other in zip(images, _drawn(by_style)[1]):
        np.testing.assert_array_equal(one, other)
    assert {ax.get_label() for ax in by_style.axes} == {'pairs', 'marginal_a', 'marginal_b'}  # no colorbars
    assert to_rgb(by_style.get_facecolor()) == to_rgb(THEMES['dark']['face'])
    # the widths and opacities are the style's, by the formula, against a brute-force selection
    pairs = select_pairs(res.relevance[1], res.grid_a, res.grid_b, k=6)
    strength = np.sort(np.abs(pairs.values)) / np.abs(pairs.values).max()
    assert sorted(line[2] for line in lines) == pytest.approx(1.0 + 2.0 * strength)
    assert sorted(line[3] for line in lines) == pytest.approx(0.2 + 0.6 * strength)
    assert all(len(line[0]) == 24 for line in lines)  # arcs, not straight segments


def test_keywords_override_the_style_and_paper_is_a_style(result):
    res, x_a, x_b = result
    fig = plot_bilrp(res, x_a, x_b, k=3, style=PairStyle(background='dark'), background='light')
    assert to_rgb(fig.get_facecolor()) == to_rgb(THEMES['light']['face'])
    paper = _drawn(plot_bilrp(res, x_a, x_b, style='paper'))[0]
    assert paper == _drawn(plot_bilrp(res, x_a, x_b, style=PairStyle(paper=True)))[0]
    style = PairStyle(paper=True)
    assert (style.line_widths, style.line_alphas, style.arc, style.draw_markers) == ((0.1, 1.1), (0.0, 0.9), 0.06,
                                                                                     False)
    assert (PairStyle().line_widths, PairStyle().line_alphas, PairStyle().arc) == ((0.5, 2.5), (0.35, 0.95), 0.0)
    # the paper's widths on the paper's normalisation: |v| clipped to 1 at vmax = 1
    selection = select_pairs(res.relevance[0], res.grid_a, res.grid_b, style='paper')
    assert sorted(line[2] for line in paper) == pytest.approx(sorted(0.1 + 1.0 * np.abs(selection.values)))


def test_stack_and_grid_take_the_style(result):
    res, x_a, x_b = result
    style = PairStyle(linewidth=(2.0, 2.0), marginals=False)
    stack = plot_bilrp_stack([(res, x_a, x_b, 'one'), (res, x_a, x_b, 'two')], k=4, style=style)
    for sub in stack.subfigs[::2]:
        assert [ax.get_label() for ax in sub.axes] == ['pairs']
        assert {line.get_linewidth() for line in _axis(sub, 'pairs').lines} == {2.0}
    grid = plot_pair_grid(res, x_a[0], x_b, k=3, style=style, background='dark')
    assert {ax.get_label() for ax in grid.axes} == {'pairs_0', 'pairs_1'}
    assert {line.get_linewidth() for ax in grid.axes for line in ax.lines} == {2.0}
    assert to_rgb(grid.get_facecolor()) == to_rgb(THEMES['dark']['face'])
    with pytest.raises(ValueError, match="plot_pair_grid draws its rows on one scale; the 'paper' style"):
        plot_pair_grid(res, x_a[0], x_b, style='paper')


def test_bad_style_fields_are_named(result):
    res, x_a, x_b = result
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'fdae'.*background, paper, fade"):
        plot_bilrp(res, x_a, x_b, fdae=0.3)
    with pytest.raises(ValueError, match=r'fade must be in \[0, 1\), got 1.5'):
        PairStyle(fade=1.5)
    with pytest.raises(ValueError, match='background must be one of'):
        PairStyle(background='blue')
    with pytest.raises(ValueError, match='linewidth must be two numbers'):
        PairStyle(linewidth=3)
    with pytest.raises(ValueError, match="style must be 'lines', 'paper' or a PairStyle"):
        plot_bilrp(res, x_a, x_b, style='arcs')
    with pytest.raises(Exception, match='frozen|cannot assign'):
        PairStyle().fade = 0.1
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    pairs = select_pairs(res.relevance[0], res.grid_a, res.grid_b, k=2)
    draw_pairs(ax, x_a[0], x_b[0], pairs, style=PairStyle(markers=False), fade=0.0)
    assert len(ax.collections) == 0 and len(ax.lines) == 2
    np.testing.assert_allclose(ax.images[0].get_array(), x_a[0].permute(1, 2, 0).double().numpy())  # no fading


def _curve(last=0.0):
    ks = torch.arange(1, 5)
    mse = torch.tensor([[4.0, 1.0, 0.25, last]], dtype=torch.float64)
    smape = torch.tensor([[120.0, 60.0, 30.0, 0.0]], dtype=torch.float64)
    return SelectionCurve(ks, mse, smape, torch.tensor([[3, 1, 0, 2]]), torch.ones(1, 4, dtype=torch.float64),
                          torch.tensor([2.0], dtype=torch.float64), 'layer2', 'channel', 4)


def test_selection_curve_figure():
    ax = plot_selection_curve(_curve(), tolerance=50.0)
    (relative,) = ax.lines[:1]
    np.testing.assert_allclose(relative.get_ydata()[:3], [2.0, 0.5, 0.125])  # MSE / mean square of the full map
    assert math.isnan(relative.get_ydata()[3])  # an exact zero is not drawn on the log axis
    assert ax.get_yscale() == 'log'
    twin = [other for other in ax.figure.axes if other is not ax][0]
    np.testing.assert_allclose(twin.lines[0].get_ydata(), [120.0, 60.0, 30.0, 0.0])
    assert ax.get_title() == 'smallest k with SMAPE <= 50: 3'
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [3]  # the marker of the smallest k
    assert 'channels of layer2, of 4' in ax.get_xlabel()
    ax = plot_selection_curve(_curve(last=0.1), tolerance=0.05, metric='mse')
    assert ax.get_title() == 'MSE <= 0.05 not reached for k <= 4' and len(ax.lines) == 1
    matplotlib.pyplot.close('all')


def test_reconstructions_figure():
    torch.manual_seed(0)
    deconv = torch.randn(1, 2, 3, 6, 8)
    lrp = torch.randn(1, 2, 3, 6, 8)
    result = Reconstruction(deconv, lrp, torch.ones(1, 2), torch.tensor([5, 7]), 'block1', 'map')
    images = torch.rand(1, 3, 6, 8)
    fig = plot_reconstructions(images, result, title='custom')
    axes = np.array(fig.axes).reshape(2, 3)
    np.testing.assert_allclose(axes[0, 0].images[0].get_array(), images[0].permute(1, 2, 0).numpy(), rtol=1e-6)
    expected = (0.5 + 0.5 * deconv[0, 1] / deconv[0, 1].abs().max()).clamp(0, 1).permute(1, 2, 0)
    np.testing.assert_allclose(axes[0, 2].images[0].get_array(), expected.numpy(), rtol=1e-6)
    heat = lrp[0, 0].sum(0)
    shown = axes[1, 1].images[0]
    np.testing.assert_allclose(shown.get_array(), heat.numpy(), rtol=1e-6)
    assert shown.get_clim() == pytest.approx((-float(heat.abs().max()), float(heat.abs().max())))
    assert [ax.get_title() for ax in axes[0, 1:]] == ['ch 5: deconv', 'ch 7: deconv']
    assert fig._suptitle.get_text() == 'custom'
    without = plot_reconstructions(images, Reconstruction(deconv, None, torch.ones(1, 2), torch.tensor([5, 7]),
                                                          'block1', 'max'))
    assert len(without.axes) == 3 and 'block1' in without._suptitle.get_text()
    matplotlib.pyplot.close('all')
