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
