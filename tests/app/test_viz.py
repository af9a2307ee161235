"""Figures: content checks (lines per pair, colors by sign, extents, heatmap data), formats, themes."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from zennit_bilrp import BiLRP, Pooling
from zennit_bilrp.app.viz import (
    THEMES,
    draw_pairs,
    plot_bilrp,
    plot_bilrp_stack,
    plot_critical_paths,
    plot_pair_grid,
    plot_relevance_matrix,
    save_figure,
    select_pairs,
)
from zennit_bilrp.models.small_resnet import SmallResNet

matplotlib.use('Agg')


def _axis(fig, label):
    matches = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(matches) == 1, [ax.get_label() for ax in fig.axes]
    return matches[0]


@pytest.fixture(scope='module')
def result():
    """A real engine result on a tiny random CNN: 2 pairs of 16 x 24 images, 4-pixel patches."""
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), batch_norm=False).eval()
    x_a, x_b = torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24)
    with BiLRP(model, similarity='dot') as bilrp:
        res = bilrp(x_a, x_b, pooling=4)
    return res, x_a, x_b


def _signed_matrix(seed=0, shape=(24, 24)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize('k', [1, 7, 20])
def test_number_of_lines_equals_k(result, k):
    res, x_a, x_b = result
    fig = plot_bilrp(res, x_a, x_b, k=k)
    ax = _axis(fig, 'pairs')
    assert len(ax.lines) == k
    assert {a.get_label() for a in fig.axes} == {'pairs', 'marginal_a', 'marginal_b'}


def test_lines_join_the_top_pairs_with_colors_by_sign(result):
    res, x_a, x_b = result
    k = 15
    fig = plot_bilrp(res, x_a, x_b, index=1, k=k, by='abs')
    ax = _axis(fig, 'pairs')
    rel = res.relevance[1].double()
    # brute force: the k largest |R| entries and their patch centers
    order = np.argsort(-rel.abs().reshape(-1).numpy())[:k]
    centers = res.grid_a.patch_centers().numpy()
    width_a = x_a.shape[3]
    offset = ax.images[1].get_extent()[0] + 0.5
    expected = set()
    for flat in order:
        pa, pb = divmod(int(flat), rel.shape[1])
        value = float(rel[pa, pb])
        expected.add((centers[pa][1], centers[pa][0], centers[pb][1] + offset, centers[pb][0], np.sign(value)))
    drawn = set()
    theme = THEMES['light']
    for line in ax.lines:
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        color = to_rgb(line.get_color())
        sign = 1.0 if color == to_rgb(theme['positive']) else (-1.0 if color == to_rgb(theme['negative']) else 0)
        assert sign != 0, f'unexpected line color {color}'
        drawn.add((x0, y0, x1, y1, sign))
    assert drawn == expected
    assert offset > width_a - 0.5  # the second image starts right of the first


def test_colors_follow_signs_and_width_follows_magnitude():
    rel = _signed_matrix(1)
    grid = Pooling(patch=4).resolve((3, 16, 24))
    fig = plot_bilrp(rel, torch.rand(3, 16, 24), torch.rand(3, 16, 24), k=30, patch=4, marginals=False)
    ax = _axis(fig, 'pairs')
    pairs = select_pairs(rel, grid, grid, k=30)
    assert (pairs.values > 0).any() and (pairs.values < 0).any()
    reds = [line for line in ax.lines if to_rgb(line.get_color()) == to_rgb(THEMES['light']['positive'])]
    blues = [line for line in ax.lines if to_rgb(line.get_color()) == to_rgb(THEMES['light']['negative'])]
    assert len(reds) == int((pairs.values > 0).sum()) and len(blues) == int((pairs.values < 0).sum())
    for line in reds:  # red: R dominant; blue: B dominant
        r, g, b = to_rgb(line.get_color())
        assert r > b
    for line in blues:
        r, g, b = to_rgb(line.get_color())
        assert b > r
    # lines are drawn weakest first; width and opacity grow with |R|
    widths = np.array([line.get_linewidth() for line in ax.lines])
    alphas = np.array([line.get_alpha() for line in ax.lines])
    magnitudes = np.sort(np.abs(pairs.values))
    assert np.all(np.diff(widths) >= -1e-12) and np.all(np.diff(alphas) >= -1e-12)
    assert widths[-1] == pytest.approx(2.5) and widths[0] == pytest.approx(0.5 + 2.0 * magnitudes[0] / magnitudes[-1])


def test_threshold_instead_of_k():
    rel = _signed_matrix(2)
    peak = rel.abs().max()
    for t in (0.3, 0.6, 1.0):
        fig = plot_bilrp(rel, torch.rand(3, 16, 24), torch.rand(3, 16, 24), threshold=t, patch=4, marginals=False)
        assert len(_axis(fig, 'pairs').lines) == int((rel.abs() >= t * peak).sum())
    with pytest.raises(ValueError, match='threshold'):
        plot_bilrp(rel, torch.rand(3, 16, 24), torch.rand(3, 16, 24), threshold=1.5, patch=4)


def test_axes_extents_match_images():
    x_a, x_b = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 20, 12)
    grid_a, grid_b = Pooling(patch=4).resolve((3, 16, 24)), Pooling(patch=4).resolve((3, 20, 12))
    rel = torch.randn(grid_a.num_patches, grid_b.num_patches)
    fig = plot_bilrp(rel, x_a, x_b, k=5, patch=(grid_a, grid_b))
    ax = _axis(fig, 'pairs')
    first, second = ax.images
    assert first.get_extent() == pytest.approx((-0.5, 23.5, 15.5, -0.5))
    x0 = second.get_extent()[0]
    assert second.get_extent() == pytest.approx((x0, x0 + 12, 19.5, -0.5))
    assert x0 > 23.5
    assert first.get_array().shape[:2] == (16, 24) and second.get_array().shape[:2] == (20, 12)
    assert ax.get_xlim() == pytest.approx((-0.5, x0 + 12)) and ax.get_ylim() == pytest.approx((19.5, -0.5))
    for name, shape in (('marginal_a', (16, 24)), ('marginal_b', (20, 12))):
        heat = _axis(fig, name).images[0]
        assert heat.get_array().shape == shape
        assert heat.get_extent() == pytest.approx((-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5))


def test_marginal_heatmaps_show_the_exact_marginals(result):
    res, x_a, x_b = result
    for background, cmap in (('light', 'zennit_bwr'), ('dark', 'zennit_coldnhot')):
        fig = plot_bilrp(res, x_a, x_b, index=1, k=3, background=background)
        for side in 'ab':
            image = _axis(fig, f'marginal_{side}').images[0]
            expected = getattr(res, f'marginal_{side}')[1].double().sum(0).numpy()
            np.testing.assert_allclose(np.asarray(image.get_array()), expected, rtol=1e-12, atol=0)
            vmin, vmax = image.get_clim()
            assert vmin == pytest.approx(-vmax) and vmax == pytest.approx(np.abs(expected).max())
            assert image.get_cmap().name == cmap
        assert to_rgb(fig.get_facecolor()) == to_rgb(THEMES[background]['face'])
        # the heatmaps sum to the similarity (conservation carried into the picture)
        total = np.asarray(_axis(fig, 'marginal_a').images[0].get_array()).sum()
        assert total == pytest.approx(float(res.relevance[1].sum()), rel=1e-5)


def test_readable_at_224_and_512_pixels():
    sizes = {}
    for side in (224, 512):
        grid = Pooling(patch=32).resolve((3, side, side))
        rel = _signed_matrix(3, (grid.num_patches, grid.num_patches))
        fig = plot_bilrp(rel, torch.rand(3, side, side), torch.rand(3, side, side), k=12, patch=32)
        ax = _axis(fig, 'pairs')
        assert len(ax.lines) == 12
        sizes[side] = (tuple(fig.get_size_inches()), max(line.get_linewidth() for line in ax.lines))
    # same figure size and line widths in points: the picture does not depend on the pixel count
    (size_224, width_224), (size_512, width_512) = sizes[224], sizes[512]
    assert size_224 == pytest.approx(size_512, rel=1e-2) and width_224 == width_512


def test_relevance_matrix_view(result):
    res, _, _ = result
    ax = plot_relevance_matrix(res, index=1)
    image = ax.images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), res.relevance[1].double().numpy(), rtol=1e-12)
    vmin, vmax = image.get_clim()
    assert vmin == pytest.approx(-vmax)
    assert image.get_array().shape == (res.grid_a.num_patches, res.grid_b.num_patches)
    # one separator per row boundary of the 4 x 6 patch grids: 3 horizontal + 3 vertical lines
    assert len(ax.lines) == 2 * (res.grid_a.grid[0] - 1)


def test_pair_grid_one_row_per_pair(result):
    res, x_a, x_b = result
    fig = plot_pair_grid(res, x_a[0], x_b, k=4)
    for i in range(2):
        assert len(_axis(fig, f'pairs_{i}').lines) == 4
        heat = _axis(fig, f'marginal_b_{i}').images[0]
        np.testing.assert_allclose(np.asarray(heat.get_array()), res.marginal_b[i].double().sum(0).numpy(),
                                   rtol=1e-12)
    fig = plot_pair_grid(res.relevance, x_a[0], x_b, k=2, marginals=False, patch=4, labels=['one', 'two'])
    assert len(fig.axes) == 2 and _axis(fig, 'pairs_1').get_title(loc='left') == 'two'
    with pytest.raises(ValueError, match='batch of 2'):
        plot_pair_grid(res, x_a[0], x_b[:1], k=2)


def test_pair_grid_sorted_by_similarity(result):
    res, x_a, x_b = result
    order = torch.argsort(res.similarity, descending=True).tolist()
    fig = plot_pair_grid(res, x_a[0], x_b, k=2, sort=True)
    for row, i in enumerate(order):
        assert _axis(fig, f'pairs_{row}').get_title(loc='left') == f'#{row + 1}: y = {float(res.similarity[i]):.3f}'
        heat = _axis(fig, f'marginal_b_{row}').images[0]
        np.testing.assert_allclose(np.asarray(heat.get_array()), res.marginal_b[i].double().sum(0).numpy(),
                                   rtol=1e-12)
    with pytest.raises(ValueError, match='sort=True needs'):
        plot_pair_grid(res.relevance, x_a[0], x_b, k=2, patch=4, sort=True)


def test_save_figure_takes_axes(result, tmp_path):
    res, _, _ = result
    ax = plot_relevance_matrix(res)
    path = save_figure(ax, tmp_path / 'matrix.png')
    assert path.read_bytes()[:4] == b'\x89PNG'


def test_no_pyplot_figures_and_formats(result, tmp_path):
    res, x_a, x_b = result
    before = plt.get_fignums()
    fig = plot_bilrp(res, x_a, x_b, k=5, background='dark')
    plot_relevance_matrix(res)
    plot_pair_grid(res, x_a, x_b, k=2)
    assert plt.get_fignums() == before  # nothing registered with pyplot, nothing shown
    magic = {'.png': b'\x89PNG', '.svg': b'<?xml', '.pdf': b'%PDF'}
    for suffix, head in magic.items():
        path = save_figure(fig, tmp_path / f'figure{suffix}')
        assert path.read_bytes()[:len(head)] == head
    with pytest.raises(ValueError, match='use one of'):
        save_figure(fig, tmp_path / 'figure.jpg')


def test_draw_pairs_into_existing_axes_and_errors():
    from matplotlib.figure import Figure

    grid = Pooling(patch=4).resolve((3, 8, 8))
    rel = torch.tensor([[1.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]])
    pairs = select_pairs(rel, grid, grid, k=3)
    assert sorted(pairs.values.tolist()) == [-2.0, 0.5, 1.0]
    ax = Figure().add_subplot()
    draw_pairs(ax, np.zeros((8, 8)), np.ones((8, 8, 3)), pairs, markers=False)
    assert len(ax.lines) == 3 and len(ax.collections) == 0
    with pytest.raises(ValueError, match='does not match the grids'):
        select_pairs(torch.zeros(3, 4), grid, grid)
    with pytest.raises(ValueError, match='k must be'):
        select_pairs(rel, grid, grid, k=17)
    with pytest.raises(ValueError, match='needs `patch`'):
        plot_bilrp(rel, torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match='size'):
        plot_bilrp(rel, torch.rand(3, 8, 12), torch.rand(3, 8, 8), patch=(grid, grid))
    with pytest.raises(ValueError, match='background'):
        plot_bilrp(rel, torch.rand(3, 8, 8), torch.rand(3, 8, 8), patch=4, background='blue')


def test_bilrp_stack_gives_each_picture_its_height(result):
    res, x_a, x_b = result
    titles = ['one line', 'two\nlines']
    fig = plot_bilrp_stack([(res, x_a, x_b, titles[0]), (res, x_a, x_b, titles[1])], k=4)
    single = [plot_bilrp(res, x_a, x_b, k=4, title=title) for title in titles]
    heights = [f.get_size_inches()[1] for f in single]
    assert fig.get_size_inches()[1] == pytest.approx(sum(heights) + 0.1, rel=1e-12)
    pictures = fig.subfigs[::2]
    assert len(pictures) == 2 and len(fig.subfigs) == 3
    for picture, title in zip(pictures, titles):
        assert {ax.get_label() for ax in picture.axes} == {'pairs', 'marginal_a', 'marginal_b'}
        ax = next(ax for ax in picture.axes if ax.get_label() == 'pairs')
        assert len(ax.lines) == 4 and ax.get_title() == title
    with pytest.raises(ValueError, match='at least one'):
        plot_bilrp_stack([])
    with pytest.raises(ValueError, match=r'must be \(result, x_a, x_b, title\)'):
        plot_bilrp_stack([(res, x_a, x_b)])


def _graph():
    from zennit_bilrp.analysis.critical_path import CriticalPathGraph

    # two top channels per layer plus 'other'; flows[l][i][j]: from node j of layer l + 1 to node i of layer l
    return CriticalPathGraph(
        layers=['conv1', 'conv2', 'fc'], channels=[[3, 1], [0, 2], [5, 4]],
        relevance=[[0.5, 0.3, 0.2], [0.6, -0.1, 0.5], [0.7, 0.2, 0.1]],
        flows=[[[0.4, 0.0, 0.1], [0.2, -0.05, 0.05], [0.0, -0.05, 0.25]],
               [[0.5, 0.1, 0.0], [-0.1, 0.0, 0.0], [0.2, 0.1, 0.2]]],
        n_channels=[8, 8, 6], output_relevance=1.0,
    )


def test_critical_paths_figure_draws_the_graph(tmp_path):
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    graph = _graph()
    fig = plot_critical_paths(graph, min_share=0.02)
    assert isinstance(fig, Figure)
    ax = _axis(fig, 'critical_paths')
    # edges: the flows of at least 2% of the largest of their kind (top block / 'other' entries) between two layers
    expected = 0
    for flow in graph.flows:
        matrix = np.asarray(flow)
        top = np.zeros(matrix.shape, dtype=bool)
        top[:2, :2] = True
        for block in (top, ~top):
            values = np.abs(matrix[block])
            expected += int((values >= 0.02 * values.max()).sum())
    assert len(ax.lines) == expected == 13
    widest = max(ax.lines, key=lambda line: line.get_linewidth())
    assert widest.get_linewidth() == pytest.approx(5.2)  # the largest top flow: 0.2 + 5 * 1
    assert to_rgb(widest.get_color()) == to_rgb(THEMES['light']['positive'])
    negative = [line for line in ax.lines if to_rgb(line.get_color()) == to_rgb(THEMES['light']['negative'])]
    assert len(negative) == 2  # the negative top flows -0.05 (conv2:2 -> conv1:1) and -0.1 (fc:5 -> conv2:2)
    # nodes: 3 layers x (2 top + other); the critical chain fc:5 -> conv2:0 -> conv1:3 is outlined thickly
    assert len(ax.collections) == 9
    outlined = [c for c in ax.collections if c.get_linewidths()[0] == 2.0]
    assert len(outlined) == 3 == len(graph.critical_chain())
    labels = [text.get_text() for text in ax.texts]
    assert '3 (50.0%)' in labels and 'other 6 ch\n20.0%' in labels
    assert [t.get_text() for t in ax.get_xticklabels()] == ['conv1\n(8 ch)', 'conv2\n(8 ch)', 'fc\n(6 ch)']
    hidden = plot_critical_paths(graph, show_other=False, background='dark')
    ax = _axis(hidden, 'critical_paths')
    assert len(ax.collections) == 6 and all(line.get_linestyle() == '-' for line in ax.lines)
    assert save_figure(fig, tmp_path / 'paths.png').read_bytes()[:4] == b'\x89PNG'
    existing = Figure().add_subplot()
    assert plot_critical_paths(graph, ax=existing) is existing.figure


def test_critical_paths_refuses_a_graph_without_flows():
    graph = _graph()
    graph.flows = graph.flows[:1]
    with pytest.raises(ValueError, match='one flow matrix between each two'):
        plot_critical_paths(graph)
