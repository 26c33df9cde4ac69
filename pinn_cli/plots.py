"""Figures of a run: the loss curve and the solution with its error."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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


def plot_solution(x: np.ndarray, axes: list[np.ndarray], pred: np.ndarray, exact: np.ndarray,
                  inputs: tuple[str, ...], outputs: tuple[str, ...], title: str, path: Path,
                  time: str | None = None) -> None:
    """1D input: curves of prediction, exact and error; 2D or more: heat maps (a mid slice past 2D),
    laid out by :func:`heat_map_axes` (``time``: the equation's time input, if any)."""
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
        fig, ax = plt.subplots(n_out, 3, figsize=(14, 4 * n_out), squeeze=False)
        flip, extent, xlabel, ylabel = heat_map_axes(inputs, axes, time)
        for k in range(n_out):
            p = pred[:, k].reshape(shape)[sl]
            e = exact[:, k].reshape(shape)[sl]
            if flip:
                p, e = p.T, e.T
            ref = np.concatenate([e[np.isfinite(e)], p[np.isfinite(p)]])  # NaN: outside the domain
            vmin, vmax = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)  # overshoot shows
            for j, (img, name) in enumerate(((p, "PINN"), (e, "exact"), (np.abs(p - e), "|error|"))):
                kw = {} if j == 2 else {"vmin": vmin, "vmax": vmax}
                im = ax[k, j].imshow(img, origin="lower", aspect="auto", extent=extent, cmap="viridis" if j < 2 else "magma", **kw)
                ax[k, j].set_title(f"{outputs[k]}: {name}")
                ax[k, j].set_xlabel(xlabel)
                ax[k, j].set_ylabel(ylabel)
                fig.colorbar(im, ax=ax[k, j])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
