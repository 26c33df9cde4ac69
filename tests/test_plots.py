"""Figures say what they show: the slice of a 3D+ solution plot, a colour range holding the prediction's
overshoot, and loss-curve labels that tell the weighted total from the mean-square terms."""
from __future__ import annotations

import numpy as np
import pytest

from pinn_cli import plots


@pytest.fixture
def figures(monkeypatch):
    kept = []
    monkeypatch.setattr(plots.plt, "close", lambda fig: kept.append(fig))
    return kept


def test_a_slice_of_three_inputs_is_named_and_overshoot_is_on_the_scale(figures, tmp_path):
    axes = [np.linspace(0, 1, 5), np.linspace(0, 1, 4), np.linspace(0, 2, 3)]
    x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    exact = np.sin(x[:, :1])
    pred = exact.copy()
    pred[7] = 3.0  # overshoot in the shown slice (t index 1 of 3)
    plots.plot_solution(x, axes, pred, exact, ("x", "y", "t"), ("u",), "heat: rel L2 1e-3", tmp_path / "s.png")
    fig = figures[-1]
    assert "the slice t = 1" in fig._suptitle.get_text()
    pinn_panel = fig.axes[0].images[0]
    assert pinn_panel.get_clim()[1] == pytest.approx(3.0)


def drawn(image, labels: tuple[str, str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """An imshow panel as drawn: the coordinate of every pixel, named by the axis labels, and its value."""
    lo_h, hi_h, lo_v, hi_v = image.get_extent()
    img = np.asarray(image.get_array())
    assert image.origin == "lower"
    rows, cols = img.shape
    v, h = np.meshgrid(np.linspace(lo_v, hi_v, rows), np.linspace(lo_h, hi_h, cols), indexing="ij")
    return {labels[0]: h, labels[1]: v}, img


@pytest.mark.parametrize("inputs, across", [(("x", "y"), "x"), (("x", "t"), "t"), (("t", "x"), "t")])
def test_heat_maps_put_x_across_and_time_across(figures, tmp_path, inputs, across):
    """poisson2d's solution.png drew x up and y across (the plane transposed); the plane now has its
    first input across, a space-time map its time across, and every pixel shows u at the point its
    axis labels name (u is not symmetric in the two inputs, on unequal ranges)."""
    axes = [np.linspace(0, 2, 7), np.linspace(-1, 1, 5)]
    x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    u = lambda a, b: a + 10 * b**2 + a * b
    exact = u(x[:, 0], x[:, 1])[:, None]
    plots.plot_solution(x, axes, exact + 1.0, exact, inputs, ("u",), "t", tmp_path / "s.png",
                        time="t" if "t" in inputs else None)
    for panel, shift in zip(figures[-1].axes[:2], (1.0, 0.0)):  # the PINN and exact panels
        labels = (panel.get_xlabel(), panel.get_ylabel())
        assert labels[0] == across and set(labels) == set(inputs)
        coords, img = drawn(panel.images[0], labels)
        assert np.allclose(img, u(coords[inputs[0]], coords[inputs[1]]) + shift)


def test_loss_curve_labels(figures, tmp_path):
    from matplotlib.colors import to_rgb

    history = [{"step": s, "loss": 1.0 / s, "loss_pde": 0.5 / s, "loss_bc": 0.1 / s, "loss_ic": 0.2 / s,
                "loss_c4": 0.3 / s, "rel_l2": 0.1 if s % 2 == 0 else None} for s in range(1, 7)]
    plots.plot_loss(history, ["pde", "bc", "ic", "c4"], tmp_path / "l.png")
    ax = figures[-1].axes[0]
    colors = {line.get_label(): to_rgb(line.get_color()) for line in ax.lines}
    assert list(colors)[0] == "loss (weighted total)" and "loss c4 (mean square)" in colors
    red = colors.pop("rel L2 (eval)")
    assert red == to_rgb("tab:red") and red not in colors.values()  # a 4th term is not drawn in rel L2's red
    assert ax.get_ylabel()


def box_inches(fig, ax) -> tuple[float, float]:
    """Width and height, in inches, of an axes' box as last drawn (its aspect and locator applied)."""
    box = ax.get_position()
    fig_w, fig_h = fig.get_size_inches()
    return box.width * fig_w, box.height * fig_h


def heat_map_figure(figures, tmp_path, inputs, bounds, time=None):
    """The figure of solution.png of two outputs on a grid over ``bounds``, NaN outside the inscribed ellipse."""
    axes = [np.linspace(lo, hi, 41) for lo, hi in bounds]
    x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    exact = np.stack([np.sin(x[:, 0]) * x[:, 1], x[:, 0] + x[:, 1]], 1)
    mid = [(lo + hi) / 2 for lo, hi in bounds]
    half = [(hi - lo) / 2 for lo, hi in bounds]
    exact[((x[:, 0] - mid[0]) / half[0]) ** 2 + ((x[:, 1] - mid[1]) / half[1]) ** 2 > 1] = np.nan
    plots.plot_solution(x, axes, exact + 0.1, exact, inputs, ("u", "v"), "t", tmp_path / "s.png", time=time)
    return figures[-1]


def images(fig):
    """The heat-map panels of a figure (not their colorbars)."""
    return [a for a in fig.axes if a.images and a.get_label() != "<colorbar>"]


@pytest.mark.parametrize("inputs, bounds, time", [
    (("x", "y"), [(-1, 1), (-1, 1)], None),          # poisson2d on a disk
    (("x", "y"), [(0, 10), (0, 1)], None),           # a long thin plane
    (("x", "y"), [(0, 1), (0, 4)], None),            # a tall one
    (("x", "y", "t"), [(0, 2), (0, 1), (0, 1)], "t"),  # heat2d: the x-y slice is a plane
])
def test_a_spatial_plane_is_drawn_to_scale_and_fills_its_figure(figures, tmp_path, inputs, bounds, time):
    """Heat maps of a plane were stretched to their panels (aspect "auto"): a disk showed as an
    ellipse, a [0,10]x[0,1] strip as a square. One unit of x is now as long as one of y, every
    colorbar is as tall as its image, and a long thin plane is not left a sliver in a blank figure."""
    fig = heat_map_figure(figures, tmp_path, inputs, bounds, time)
    panels = images(fig)
    assert len(panels) == 6
    ratio = (bounds[1][1] - bounds[1][0]) / (bounds[0][1] - bounds[0][0])
    fig_w, fig_h = fig.get_size_inches()
    drawn = sum(np.prod(box_inches(fig, ax)) for ax in panels)
    assert drawn > 0.25 * fig_w * fig_h  # the images, not margins, fill the figure
    for ax in panels:
        assert ax.get_aspect() == 1.0
        assert ax.get_xlim() == pytest.approx(bounds[0]) and ax.get_ylim() == pytest.approx(bounds[1])
        w, h = box_inches(fig, ax)
        assert h / w == pytest.approx(ratio, rel=0.02)
        bar = ax.images[0].colorbar.ax
        assert box_inches(fig, bar)[1] == pytest.approx(h, rel=0.02)
        x0, y0, x1, y1 = bar.get_position().extents
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1  # tight_layout kept it in the figure


def test_a_space_time_diagram_still_fills_its_panel(figures, tmp_path):
    """x-t maps keep aspect "auto": x and t have no common unit, so the map fills its panel."""
    fig = heat_map_figure(figures, tmp_path, ("x", "t"), [(0, 10), (0, 1)], time="t")
    for ax in images(fig):
        assert ax.get_aspect() == "auto"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("t", "x")
        w, h = box_inches(fig, ax)
        assert 0.5 < h / w < 2


def test_a_wide_plane_with_many_rows_keeps_them_as_rows():
    """Stacking a wide plane's panels in columns suits a row or three (outputs); twenty ensemble members
    as twenty columns would leave each image under an inch wide."""
    import matplotlib.pyplot as plt

    from pinn_cli.plots import heat_map_grid

    fig, ax = heat_map_grid(20, 3, [0.0, 3.0, 0.0, 1.0], True, cell=(4.2, 3.4))
    assert ax.shape == (20, 3) and fig.get_size_inches()[0] / 3 >= 2.5
    plt.close(fig)
    fig, ax = heat_map_grid(1, 3, [0.0, 3.0, 0.0, 1.0], True, cell=(4.2, 3.4))
    assert ax.shape == (1, 3)  # indexed [row, col] whatever the layout
    assert fig.get_size_inches()[1] > fig.get_size_inches()[0] / 3  # the three panels stacked, one above another
    plt.close(fig)
