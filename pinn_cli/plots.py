"""Figures of a run: the loss curve and the solution with its error."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from mpl_toolkits.axes_grid1 import make_axes_locatable

PLANE_INCHES = 3.4      # long side of a to-scale image
TALL_INCHES = 5.0       # at most this tall (a plane taller than wide)
WIDE_INCHES = 8.0       # width of a stacked image (a plane more than twice as wide as tall)
MARGIN_INCHES = (1.6, 0.8)  # around an image: tick labels, axis label and colorbar; title and x label
TITLE_INCHES = 0.7      # the figure's title (up to two lines)
MIN_WIDTH_INCHES = 8.0  # room for the title above narrow panels
MAX_WIDTH_INCHES = 24.0  # stacked strips of many ensemble members share this width


def plot_loss(history: list[dict], terms: list[str], path: Path) -> None:
    """Total loss, each term and rel L2 against step, log scale."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.array([r["step"] for r in history])
    if len(steps):
        ax.semilogy(steps, [r["loss"] for r in history], label="loss (weighted total)", color="black", lw=1.8)
        colors = [plt.cm.tab10.colors[i] for i in (0, 1, 2, 4, 5, 6, 8, 9)]  # tab10 without red and grey
        for i, name in enumerate(terms):
            ax.semilogy(steps, [r[f"loss_{name}"] for r in history], label=f"loss {name} (mean square)", lw=1,
                        color=colors[i % len(colors)])
        ev = [(r["step"], r["rel_l2"]) for r in history if r.get("rel_l2") not in (None, "")]
        if ev:
            s, e = zip(*ev)
            ax.semilogy(s, e, "o--", label="rel L2 (eval)", color="tab:red", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss, mean-square terms, rel L2")
    ax.grid(True, which="both", alpha=0.3)
    if len(steps):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no logged steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("training history")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heat_map_axes(inputs: tuple[str, ...], axes: list[np.ndarray],
                  time: str | None) -> tuple[bool, list[float], str, str]:
    """How to draw a grid indexed ``[inputs[0], inputs[1]]`` (meshgrid ``ij``) with ``imshow``:
    (transpose it first, extent, horizontal label, vertical label). Time, when it is one of the two,
    runs along the horizontal axis (a space-time diagram); otherwise ``inputs[0]`` does and
    ``inputs[1]`` runs up, as a plane is drawn (imshow puts an array's rows on the vertical axis, so
    the untransposed grid would show x up and y across)."""
    h, v = (1, 0) if inputs[1] == time else (0, 1)
    return h == 0, [axes[h][0], axes[h][-1], axes[v][0], axes[v][-1]], inputs[h], inputs[v]


def is_plane(inputs: tuple[str, ...], time: str | None) -> bool:
    """Whether a heat map of ``inputs[0]`` and ``inputs[1]`` shows a spatial plane (neither is the
    equation's ``time``): a plane is drawn to scale, so a disk stays round; a space-time diagram
    stretches to its panel, its two units being unrelated."""
    return time not in inputs[:2]


def _image_inches(ratio: float, stacked: bool, n_cols: int) -> tuple[float, float]:
    """Width and height of one to-scale image of a plane ``ratio`` times as tall as it is wide:
    stacked (wide) planes get a long strip, as wide as ``n_cols`` of them fit in
    ``MAX_WIDTH_INCHES``; the others about ``PLANE_INCHES`` on their long side."""
    if stacked:
        width = min(WIDE_INCHES, MAX_WIDTH_INCHES / n_cols - MARGIN_INCHES[0])
        return width, width * ratio
    if ratio <= 1:
        return PLANE_INCHES, PLANE_INCHES * ratio
    height = min(PLANE_INCHES * ratio, TALL_INCHES)
    return height / ratio, height


def heat_map_grid(rows: int, cols: int, extent: list[float], plane: bool,
                  cell: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure for ``rows`` x ``cols`` heat maps, with its axes indexed ``[row, col]``.

    A space-time diagram (``plane`` false) fills cells of ``cell`` inches. A plane is drawn to
    scale, so the figure is sized from the domain's shape (``extent``) rather than squeezing each
    image into a fixed cell, which would leave a long thin domain a strip in a sea of white. A
    plane more than twice as wide as tall has each row's panels stacked in a column instead, so
    every image gets the figure's width, unless rows outnumber columns (then the rows stay rows)."""
    if not plane:
        fig, ax = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
        return fig, ax
    span_x, span_y = abs(extent[1] - extent[0]), abs(extent[3] - extent[2])
    ratio = span_y / span_x if span_x and span_y else 1.0
    stacked = ratio < 0.5 and rows <= cols  # many rows (ensemble members) would become as many columns
    n_rows, n_cols = (cols, rows) if stacked else (rows, cols)
    width, height = _image_inches(ratio, stacked, n_cols)
    size = (max(n_cols * (width + MARGIN_INCHES[0]), MIN_WIDTH_INCHES),
            n_rows * (height + MARGIN_INCHES[1]) + TITLE_INCHES)
    fig, ax = plt.subplots(n_rows, n_cols, figsize=size, squeeze=False)
    return fig, (ax.T if stacked else ax)


def heat_map(fig: Figure, ax: Axes, img: np.ndarray, extent: list[float], plane: bool, cmap: str,
             title: str, labels: tuple[str, str], title_size: float | None = None, **scale: float) -> AxesImage:
    """One heat map with its colorbar: to scale (``aspect="equal"``) for a plane, stretched to the
    panel for a space-time diagram. The colorbar sits in an axes split off the image's own, so it
    is as tall as the image whatever the domain's shape."""
    im = ax.imshow(img, origin="lower", aspect="equal" if plane else "auto", extent=extent, cmap=cmap, **scale)
    ax.set_title(title, fontsize=title_size)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.locator_params(axis="x", nbins=5)
    cax = make_axes_locatable(ax).append_axes("right", size=0.15, pad=0.08)
    fig.colorbar(im, cax=cax)
    return im


def plot_solution(x: np.ndarray, axes: list[np.ndarray], pred: np.ndarray, exact: np.ndarray,
                  inputs: tuple[str, ...], outputs: tuple[str, ...], title: str, path: Path,
                  time: str | None = None) -> None:
    """1D input: curves of prediction, exact and error; 2D or more: heat maps (a mid slice past 2D),
    laid out by :func:`heat_map_axes`, a plane to scale (``time``: the equation's time input, if any)."""
    n_out = pred.shape[1]
    if len(inputs) == 1:
        fig, ax = plt.subplots(2, n_out, figsize=(6 * n_out, 6), squeeze=False)
        for k in range(n_out):
            ax[0, k].plot(x[:, 0], exact[:, k], "k-", lw=2, label="exact")
            ax[0, k].plot(x[:, 0], pred[:, k], "r--", lw=1.5, label="PINN")
            ax[0, k].set_ylabel(outputs[k])
            ax[0, k].legend()
            ax[1, k].semilogy(x[:, 0], np.abs(pred[:, k] - exact[:, k]) + 1e-300, "b-")
            ax[1, k].set_ylabel(f"|error| {outputs[k]}")
            ax[1, k].set_xlabel(inputs[0])
    else:
        shape = tuple(len(a) for a in axes)
        sl = (slice(None), slice(None)) + tuple(len(a) // 2 for a in axes[2:])
        where = ", ".join(f"{n} = {a[len(a) // 2]:.3g}" for n, a in zip(inputs[2:], axes[2:]))
        title = f"{title}\n(max |err| over the domain; panels: the slice {where})" if where else title
        flip, extent, xlabel, ylabel = heat_map_axes(inputs, axes, time)
        plane = is_plane(inputs, time)
        fig, ax = heat_map_grid(n_out, 3, extent, plane, cell=(14 / 3, 4))
        for k in range(n_out):
            p = pred[:, k].reshape(shape)[sl]
            e = exact[:, k].reshape(shape)[sl]
            if flip:
                p, e = p.T, e.T
            ref = np.concatenate([e[np.isfinite(e)], p[np.isfinite(p)]])  # NaN: outside the domain
            vmin, vmax = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)  # overshoot shows
            for j, (img, name) in enumerate(((p, "PINN"), (e, "exact"), (np.abs(p - e), "|error|"))):
                kw = {} if j == 2 else {"vmin": vmin, "vmax": vmax}
                heat_map(fig, ax[k, j], img, extent, plane, "viridis" if j < 2 else "magma",
                         f"{outputs[k]}: {name}", (xlabel, ylabel), **kw)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
