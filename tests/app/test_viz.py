"""Figures: content checks (lines per pair, colors by sign, extents, heatmap data), formats, themes."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from zennit_bilrp import Pooling
from zennit_bilrp.app.viz import (
    THEMES,
    draw_pairs,
    heatmap_image,
    plot_bilrp,
    plot_bilrp_stack,
    plot_critical_paths,
    plot_pair_grid,
    plot_relevance_matrix,
    plot_relevance_tensor,
    save_figure,
    save_heatmap,
    select_pairs,
    upsample_grid,
)
from zennit_bilrp.models.small_resnet import SmallResNet

matplotlib.use('Agg')


def _axis(fig, label):
    matches = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(matches) == 1, [ax.get_label() for ax in fig.axes]
    return matches[0]


def _signed_matrix(seed=0, shape=(24, 24)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize('k', [1, 7, 20])
def test_number_of_lines_equals_k(result, k):
    res, x_a, x_b = result
    fig = plot_bilrp(res, x_a, x_b, k=k)
    ax = _axis(fig, 'pairs')
    assert len(ax.lines) == k
    assert {a.get_label() for a in fig.axes} == {'pairs', 'marginal_a', 'marginal_b', 'colorbar_a', 'colorbar_b'}


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
    fig = plot_relevance_matrix(res, index=1)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = _axis(fig, 'relevance_matrix')
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
        title = _axis(fig, f'pairs_{row}').get_title(loc='left')
        assert title == f"query vs x'[{i}]: y = {float(res.similarity[i]):.3f}"
        heat = _axis(fig, f'marginal_b_{row}').images[0]
        np.testing.assert_allclose(np.asarray(heat.get_array()), res.marginal_b[i].double().sum(0).numpy(),
                                   rtol=1e-12)
    with pytest.raises(ValueError, match='sort=True needs'):
        plot_pair_grid(res.relevance, x_a[0], x_b, k=2, patch=4, sort=True)


def test_save_figure_takes_axes(result, tmp_path):
    res, _, _ = result
    ax = _axis(plot_relevance_matrix(res), 'relevance_matrix')
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
    with pytest.warns(UserWarning, match='drawing all 16'):
        assert len(select_pairs(rel, grid, grid, k=17).values) == 16
    with pytest.raises(ValueError, match='k must be positive'):
        select_pairs(rel, grid, grid, k=0)
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
        assert {ax.get_label() for ax in picture.axes} == {'pairs', 'marginal_a', 'marginal_b', 'colorbar_a',
                                                            'colorbar_b'}
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


def test_every_figure_function_returns_a_figure(result):
    from matplotlib.figure import Figure

    res, x_a, x_b = result
    figures = [plot_bilrp(res, x_a, x_b, k=3), plot_relevance_matrix(res), plot_pair_grid(res, x_a[0], x_b, k=2),
               plot_bilrp_stack([(res, x_a, x_b, 'one')], k=2), plot_relevance_tensor(res),
               plot_critical_paths(_graph())]
    assert all(isinstance(fig, Figure) for fig in figures)


def test_pair_grid_shares_scales_across_rows(result):
    res, x_a, x_b = result
    fig = plot_pair_grid(res, x_a[0], x_b, k=5, names=['cat.png', 'dog.png'], query_name='q.png')
    assert _axis(fig, 'pairs_1').get_title(loc='left') == f'q.png vs dog.png: y = {float(res.similarity[1]):.3f}'
    headers = [text.get_text() for text in fig.texts if text.get_label() == 'header']
    assert headers == ['q.png | match: strongest patch pairs (red +, blue -)', 'marginal of q.png',
                       'marginal of match']
    # one color range for all heatmaps: the largest |marginal| over both rows and both sides
    bound = max(float(res.marginal_a.double().sum(1).abs().max()), float(res.marginal_b.double().sum(1).abs().max()))
    for row in range(2):
        for side in 'ab':
            vmin, vmax = _axis(fig, f'marginal_{side}_{row}').images[0].get_clim()
            assert vmax == pytest.approx(bound, rel=1e-12) and vmin == pytest.approx(-bound, rel=1e-12)
    assert _axis(fig, 'colorbar').get_label() == 'colorbar'
    # one line-width scale: the widest line of all rows belongs to the largest |R| of all rows
    widths = {row: max(line.get_linewidth() for line in _axis(fig, f'pairs_{row}').lines) for row in range(2)}
    strongest = [float(res.relevance[i].abs().max()) for i in range(2)]
    top, other = (0, 1) if strongest[0] >= strongest[1] else (1, 0)
    assert widths[top] == pytest.approx(2.5)
    assert widths[other] == pytest.approx(0.5 + 2.0 * strongest[other] / strongest[top], rel=1e-6)
    # overlay: a gray image under each heatmap
    fig = plot_pair_grid(res, x_a[0], x_b, k=2, overlay=True, colorbar=False, headers=False)
    assert len(_axis(fig, 'marginal_a_0').images) == 2
    assert not [ax for ax in fig.axes if ax.get_label() == 'colorbar']
    with pytest.warns(UserWarning, match='drawing all'):
        plot_pair_grid(res, x_a[0], x_b, k=10_000, marginals=False)
    with pytest.raises(ValueError, match='names for 2 rows'):
        plot_pair_grid(res, x_a[0], x_b, names=['one'])


def test_marginal_colorbars_show_the_heatmap_scale(result):
    res, x_a, x_b = result
    fig = plot_bilrp(res, x_a, x_b, k=3)
    for side in 'ab':
        heat = _axis(fig, f'marginal_{side}')
        bar = _axis(fig, f'colorbar_{side}')
        lo, hi = bar.get_xlim()
        assert (lo, hi) == pytest.approx(heat.images[0].get_clim())
        # the bar sits below its heatmap, inside its horizontal extent
        hb, bb = heat.get_position(), bar.get_position()
        assert bb.y1 < hb.y0 and hb.x0 <= bb.x0 and bb.x1 <= hb.x1
    fig = plot_bilrp(res, x_a, x_b, k=3, colorbar=False)
    assert len(fig.axes) == 3


def test_normalized_inputs_need_denormalize(result):
    from zennit_bilrp.lrp.composites import IMAGENET_MEAN, IMAGENET_STD

    res, x_a, x_b = result
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    n_a, n_b = (x_a - mean) / std, (x_b - mean) / std
    with pytest.raises(ValueError, match='denormalize'):
        plot_bilrp(res, n_a, n_b, k=3)
    for how in ('imagenet', (IMAGENET_MEAN, IMAGENET_STD), _Transform(IMAGENET_MEAN, IMAGENET_STD)):
        fig = plot_bilrp(res, n_a, n_b, k=3, denormalize=how, fade=0.0)
        shown = np.asarray(_axis(fig, 'pairs').images[0].get_array())
        np.testing.assert_allclose(shown, x_a[0].permute(1, 2, 0).double().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='denormalize must be'):
        plot_bilrp(res, n_a, n_b, k=3, denormalize='cifar')
    with pytest.warns(UserWarning, match='drawing all'):
        fig = plot_bilrp(res, x_a, x_b, k=10_000, marginals=False)
    assert len(_axis(fig, 'pairs').lines) == res.relevance.shape[1] * res.relevance.shape[2]


class _Transform:
    """Stands in for torchvision's ``weights.transforms()`` (which has ``mean`` and ``std`` lists)."""

    def __init__(self, mean, std):
        self.mean, self.std = list(mean), list(std)


def test_paper_style_scaling_and_arcs():
    grid = Pooling(patch=4).resolve((3, 8, 8))
    rel = _signed_matrix(5, (4, 4))
    pairs = select_pairs(rel, grid, grid, style='paper')
    scale = float(rel.pow(4).mean().pow(0.25))
    expected = [v for v in (rel.reshape(-1) / scale).clamp(-1, 1).tolist() if abs(v) >= 0.25]
    assert sorted(pairs.values.tolist()) == pytest.approx(sorted(expected), rel=1e-12)
    # by hand for one value: 16 entries of which one is 2 and the rest 0: scale = (16 / 16)^(1/4) = 1
    single = torch.zeros(4, 4, dtype=torch.float64)
    single[1, 2] = 2.0
    picked = select_pairs(single, grid, grid, style='paper')
    assert picked.values.tolist() == [1.0]  # 2 / (2^4 / 16)^(1/4) = 2, clipped to 1
    fig = plot_bilrp(rel, torch.rand(3, 8, 8), torch.rand(3, 8, 8), patch=4, style='paper', title=False)
    ax = _axis(fig, 'pairs')
    assert len(ax.lines) == len(expected)
    # arcs: the middle of each curve leaves the straight segment between its ends; opacity grows with |v|
    for line in ax.lines:
        xs, ys = line.get_data()
        assert len(xs) > 2
        mid = len(xs) // 2
        assert abs(ys[mid] - (ys[0] + ys[-1]) / 2) > 0.05
    alphas = sorted((line.get_alpha(), line.get_linewidth()) for line in ax.lines)
    assert alphas[-1][0] == pytest.approx(0.9 * max(abs(v) for v in expected))  # opacity 0.9 |v|
    with pytest.raises(ValueError, match='style'):
        select_pairs(rel, grid, grid, style='fancy')


def test_relevance_tensor_mosaic(result):
    res, x_a, x_b = result
    fig = plot_relevance_tensor(res, index=1, x_a=x_a, x_b=x_b)
    mosaic = np.asarray(_axis(fig, 'relevance_tensor').images[0].get_array())
    (ha, wa), (hb, wb) = res.grid_a.grid, res.grid_b.grid
    assert mosaic.shape == (ha * hb, wa * wb)
    full = res.relevance_grid()[1].double().numpy()
    # block (r, c) holds the relevance of patch (r, c) of x to every patch of x', explicit loops
    for r in range(ha):
        for c in range(wa):
            np.testing.assert_allclose(mosaic[r * hb:(r + 1) * hb, c * wb:(c + 1) * wb], full[r, c], rtol=1e-12)
    assert {ax.get_label() for ax in fig.axes} >= {'relevance_tensor', 'image_a', 'image_b'}
    with pytest.raises(ValueError, match='BiLRPResult'):
        plot_relevance_tensor(res.relevance)


def test_layer_results_are_drawn_over_the_input():
    from zennit.composites import EpsilonPlus

    from zennit_bilrp.scale.approximations import explain_at_layer

    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), batch_norm=False).eval()
    x_a, x_b = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24)
    res = explain_at_layer(model, 'stages.1', x_a, x_b, pooling=1, composite=EpsilonPlus(), similarity='dot')
    feature_grid = res.grid_a.grid
    up = upsample_grid(res.grid_a, (16, 24))
    assert up.grid == feature_grid and up.patch == (16 // feature_grid[0], 24 // feature_grid[1])
    fig = plot_bilrp(res, x_a, x_b, k=4)
    ax = _axis(fig, 'pairs')
    top = res.top_pairs(4, by='abs')
    centers = up.patch_centers()[top.index_a[0]].numpy()
    drawn = {(float(line.get_ydata()[0]), float(line.get_xdata()[0])) for line in ax.lines}
    assert drawn == {(float(r), float(c)) for r, c in centers}
    # the pooled marginal, spread over the input, still sums to sum R
    heat = np.asarray(_axis(fig, 'marginal_a').images[0].get_array())
    assert heat.shape == (16, 24) and heat.sum() == pytest.approx(float(res.relevance.sum()), rel=1e-5)
    with pytest.raises(ValueError, match='size'):
        plot_bilrp(res, x_a, x_b, k=4, upsample=False)
    with pytest.raises(ValueError, match='does not divide'):
        upsample_grid(res.grid_a, (15, 24))


def test_heatmap_image_and_file(tmp_path):
    from PIL import Image
    from zennit.image import palette

    heat = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    rgb = heatmap_image(heat)
    colors = palette('bwr')
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    # -max -> first color, 0 -> middle, +max -> last color (symmetric range)
    np.testing.assert_array_equal(rgb[0, 0], colors[0])
    np.testing.assert_array_equal(rgb[1, 1], colors[255])
    assert abs(int(rgb[0, 1, 0]) - int(colors[128, 0])) <= 2
    path = save_heatmap(torch.rand(3, 5, 7) - 0.5, tmp_path / 'sub' / 'heat.png')
    with Image.open(path) as image:
        assert image.size == (7, 5) and image.mode == 'RGB'


def test_marginals_stay_under_their_images_in_subfigures(result):
    """In nested subfigures (as in the alignment example) each marginal spans exactly its image's columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    res, x_a, x_b = result
    fig = Figure(figsize=(12, 8))
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.05])
    top.subplots(1, 3)
    for sub in bottom.subfigures(1, 2):
        plot_bilrp(res, x_a, x_b, k=3, fig=sub, title='a title')
    fig.canvas.draw()
    for sub in bottom.subfigs:
        boxes = {ax.get_label(): ax.get_window_extent() for ax in sub.axes}
        pairs, left, right = boxes['pairs'], boxes['marginal_a'], boxes['marginal_b']
        w_a, w_b = x_a.shape[-1], x_b.shape[-1]
        xlim = next(ax for ax in sub.axes if ax.get_label() == 'pairs').get_xlim()
        per_pixel = pairs.width / (xlim[1] - xlim[0])
        assert left.x0 == pytest.approx(pairs.x0, abs=0.5) and left.width == pytest.approx(w_a * per_pixel, abs=0.5)
        assert right.x1 == pytest.approx(pairs.x1, abs=0.5) and right.width == pytest.approx(w_b * per_pixel, abs=0.5)
        assert left.y1 < pairs.y0  # below the pair row
