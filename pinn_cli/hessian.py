"""Spectrum of the loss Hessian with respect to the network parameters, from Hessian-vector products.

Nothing here forms the Hessian: every method needs only ``v -> H v``, computed by double backward
through the PINN loss (which already holds input derivatives, from either derivative engine).
The first backward pass (``create_graph=True``) is done once per loss and its graph kept, so each
product costs one more backward pass.

- ``lanczos``: Lanczos with full reorthogonalisation; Ritz values, their residual bounds
  ``|beta_m s_mi|`` (an eigenvalue of H lies within that distance of each Ritz value) and the
  Gauss quadrature weights used by stochastic Lanczos quadrature.
- ``top_eigenvalues``: the k largest eigenvalues, stopping once their residuals are below ``tol``.
- ``hutchinson``: trace from Rademacher probes, with a Student-t confidence interval.
- ``slq``: spectral density by stochastic Lanczos quadrature.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger("pinn")

MatVec = Callable[[Tensor], Tensor]


class HVP:
    """``v -> H v`` for the Hessian of a loss w.r.t. ``params`` (flat float64 vectors).

    ``loss_fn``: one callable, whose gradient graph (``create_graph``) is built once and reused by
    every product; or a list of callables whose losses add up to the loss (the same terms on chunks
    of the points), each rebuilt for every product and freed at once: memory bounded by one chunk,
    for about 1.4x the time (README, Analysis).
    """

    def __init__(self, loss_fn: Callable[[], Tensor] | Sequence[Callable[[], Tensor]],
                 params: Sequence[nn.Parameter]) -> None:
        self.pieces = [loss_fn] if callable(loss_fn) else list(loss_fn)
        self.params = [p for p in params if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.calls = 0
        self.grads: list[Tensor] | None = None
        if len(self.pieces) == 1:
            self.loss, self._live, self.grads = self._grads(self.pieces[0])
        else:
            with torch.enable_grad():
                self.loss = sum(p().detach() for p in self.pieces)

    def _grads(self, piece) -> tuple[Tensor, list[int], list[Tensor]]:
        with torch.enable_grad():
            loss = piece()
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True,
                                        materialize_grads=True)
        # a gradient that does not depend on the parameters has a zero Hessian block row
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        return loss, live, [grads[i] for i in live]

    def _product(self, live: list[int], grads: list[Tensor], v: Tensor, retain: bool) -> Tensor:
        if not grads:
            return torch.zeros_like(v)
        parts = v.to(self.dtype).split(self.sizes)
        outs = [parts[i].view(self.shapes[i]) for i in live]
        with torch.enable_grad():
            hv = torch.autograd.grad(grads, self.params, grad_outputs=outs, retain_graph=retain,
                                     allow_unused=True, materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in hv]).to(v.dtype)

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        if self.grads is not None:
            return self._product(self._live, self.grads, v, retain=True)
        out = torch.zeros_like(v)
        for piece in self.pieces:
            _, live, grads = self._grads(piece)
            out += self._product(live, grads, v, retain=False)
            del grads
        return out

    def release(self) -> None:
        """Free the retained gradient graph."""
        self.grads, self.pieces = [], []
        self.loss = self.loss.detach()


def rademacher(n: int, generator: torch.Generator, device) -> Tensor:
    """A vector of +-1 entries (float64), drawn on the CPU so results do not depend on the device."""
    z = torch.randint(0, 2, (n,), generator=generator, device="cpu", dtype=torch.int8).to(torch.float64) * 2 - 1
    return z.to(device)


@dataclass
class LanczosResult:
    """Tridiagonal coefficients and the Ritz pairs they give."""

    alphas: np.ndarray
    betas: np.ndarray                  # off-diagonal (len(alphas) - 1) and the last residual beta
    ritz: np.ndarray                   # ascending Ritz values
    residuals: np.ndarray              # |beta_m s_mi|, same order as ``ritz``
    weights: np.ndarray                # squared first components of the Ritz vectors (quadrature weights)
    iterations: int
    invariant: bool                    # the Krylov space became invariant: the Ritz values are exact
    history: list[list[float]] = field(default_factory=list)  # top Ritz values after each iteration
    basis: Tensor | None = None        # (iterations, n) orthonormal Krylov basis Q (``keep_basis``)
    next_q: Tensor | None = None       # q_{m+1}: H Q = Q T + beta_m q_{m+1} e_m^T

    def tridiagonal(self) -> np.ndarray:
        m = len(self.alphas)
        off = self.betas[: m - 1]
        return np.diag(self.alphas) + np.diag(off, 1) + np.diag(off, -1)


def _ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
    return np.linalg.eigh(t)


def lanczos(matvec: MatVec, n: int, iters: int, v0: Tensor, *, k: int = 0, tol: float = 0.0,
            track: int = 0, keep_basis: bool = False) -> LanczosResult:
    """Lanczos with full (twice classical Gram-Schmidt) reorthogonalisation, float64 vectors.

    Stops after ``iters`` steps, when the Krylov space is invariant, or (``k`` and ``tol`` > 0) once
    the ``k`` largest Ritz values have residual bounds below ``tol * max |Ritz value|``.
    ``track``: record the ``track`` largest Ritz values after every step in ``history``.
    ``keep_basis``: return the Krylov basis and the next Lanczos vector (for deflated traces).
    """
    iters = max(1, min(int(iters), n))
    q = v0.to(torch.float64)
    q = q / torch.linalg.vector_norm(q)
    basis = torch.empty((iters, n), dtype=torch.float64, device=q.device)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[list[float]] = []
    invariant = False
    evals = evecs = None
    next_q = w = None
    for j in range(iters):
        basis[j] = q
        w = matvec(q)
        alpha = float(torch.dot(w, q))
        alphas.append(alpha)
        active = basis[: j + 1]
        for _ in range(2):
            w = w - active.T.mv(active.mv(w))
        beta = float(torch.linalg.vector_norm(w))
        betas.append(beta)
        evals, evecs = _ritz(alphas, betas)
        if track:
            history.append([float(x) for x in evals[::-1][:track]])
        scale = max(float(np.abs(evals).max()), float(np.finfo(float).tiny))
        if beta <= 1e-10 * scale or not math.isfinite(beta):
            invariant = bool(beta <= 1e-10 * scale)
            break
        if k and tol > 0 and j + 1 >= k:
            res = np.abs(beta * evecs[-1, -k:])
            if np.all(res <= tol * scale):
                break
        q = w / beta
    m = len(alphas)
    res = np.abs(betas[-1] * evecs[-1, :])
    if invariant:
        res = np.zeros_like(res)
    if keep_basis and not invariant and math.isfinite(betas[-1]) and betas[-1] > 0:
        next_q = w / betas[-1]
    return LanczosResult(np.array(alphas), np.array(betas), evals, res, evecs[0, :] ** 2, m, invariant, history,
                         basis[:m] if keep_basis else None, next_q if keep_basis else None)


def top_eigenvalues(matvec: MatVec, n: int, k: int = 5, iters: int = 100, tol: float = 1e-6,
                    seed: int = 0, device="cpu", keep_basis: bool = False) -> tuple[dict, LanczosResult]:
    """The ``k`` largest eigenvalues (descending), the smallest one, and how well they converged."""
    gen = torch.Generator().manual_seed(seed)
    res = lanczos(matvec, n, iters, rademacher(n, gen, device), k=k, tol=tol, track=k, keep_basis=keep_basis)
    k_eff = min(k, len(res.ritz))
    top = res.ritz[::-1][:k_eff]
    top_res = res.residuals[::-1][:k_eff]
    scale = max(float(np.abs(res.ritz).max()), float(np.finfo(float).tiny))
    lam_max, lam_min = float(res.ritz[-1]), float(res.ritz[0])
    indefinite = bool(lam_min < -tol * scale)
    out = {
        "top_eigenvalues": [float(x) for x in top],
        "residuals": [float(x) for x in top_res],
        "converged": [bool(r <= tol * scale) or res.invariant for r in top_res],
        "lanczos_iterations": res.iterations,
        "exact": res.invariant,
        "lambda_max": lam_max,
        "lambda_min": lam_min,
        "lambda_min_residual": float(res.residuals[0]),
        # a lambda_min within the tolerance band around 0 is numerically 0: no finite bound on kappa
        "condition_number": None if indefinite else condition_number(lam_max, lam_min if lam_min > tol * scale else 0.0),
        "indefinite": indefinite,
        "history": res.history,
    }
    return out, res


def condition_number(lam_max: float, lam_min: float) -> float | None:
    """|lambda_max| / |lambda_min| of the extreme Ritz values (inf when lambda_min is 0)."""
    if lam_min == 0.0:
        return math.inf if lam_max else None
    return abs(lam_max) / abs(lam_min)


def hutchinson(matvec: MatVec, n: int, samples: int = 100, seed: int = 1, device="cpu",
               confidence: float = 0.95, krylov: LanczosResult | None = None) -> dict:
    """Hutchinson trace estimate ``mean(z^T H z)`` over Rademacher ``z``, with a Student-t interval.

    With ``krylov`` (a Lanczos run that kept its basis Q), the same products also give the deflated
    estimate ``tr(T) + mean((Pz)^T H (Pz))``, P = I - Q Q^T: the Krylov part is exact (Q^T H Q = T),
    so only the remainder is sampled, which removes the variance of the dominant eigen-directions.
    It needs no extra products: with c = Q^T z and H Q = Q T + beta q' e_m^T,
    (Pz)^T H (Pz) = z^T H z - c^T T c - 2 beta c_m (q'.z).
    """
    from scipy import stats

    def summary(vals: np.ndarray, offset: float = 0.0) -> dict:
        mean = float(vals.mean()) + offset
        if len(vals) > 1:
            stderr = float(vals.std(ddof=1) / math.sqrt(len(vals)))
            half = float(stats.t.ppf(0.5 + confidence / 2, len(vals) - 1)) * stderr
        else:
            stderr = half = math.inf
        return {"estimate": mean, "stderr": stderr, "interval": [mean - half, mean + half]}

    gen = torch.Generator().manual_seed(seed)
    plain, deflated = [], []
    if krylov is not None:
        q_basis, tri = krylov.basis, torch.as_tensor(krylov.tridiagonal(), device=device)
        beta, q_next = float(krylov.betas[-1]), krylov.next_q
    for _ in range(samples):
        z = rademacher(n, gen, device)
        zhz = float(torch.dot(z, matvec(z)))
        plain.append(zhz)
        if krylov is not None:
            c = q_basis.mv(z)
            rest = zhz - float(c.dot(tri.mv(c)))
            if q_next is not None:
                rest -= 2 * beta * float(c[-1]) * float(q_next.dot(z))
            deflated.append(rest)
    out = {"method": "hutchinson", "samples": samples, "confidence": confidence, **summary(np.array(plain))}
    if krylov is not None:
        krylov_part = float(np.sum(krylov.alphas))
        out = {"method": "hutchinson, deflated by the Lanczos basis", "samples": samples,
               "confidence": confidence, **summary(np.array(deflated), krylov_part),
               "krylov_part": krylov_part, "krylov_dim": krylov.iterations, "plain": out}
    return out


def slq(matvec: MatVec, n: int, vectors: int = 4, iters: int = 100, seed: int = 2, device="cpu") -> dict:
    """Stochastic Lanczos quadrature: Ritz nodes and weights of ``vectors`` Rademacher starts.

    The spectral density is ``(1/vectors) sum_l sum_j w_lj delta(t - node_lj)``; each start's
    weights sum to 1, and ``n * sum_j w_lj node_lj`` is an unbiased trace estimate.
    """
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(vectors):
        res = lanczos(matvec, n, iters, rademacher(n, gen, device))
        nodes.append([float(x) for x in res.ritz])
        weights.append([float(x) for x in res.weights])
    traces = [n * float(np.dot(a, b)) for a, b in zip(nodes, weights)]
    return {"nodes": nodes, "weights": weights, "vectors": vectors, "iterations": iters,
            "trace_estimate": float(np.mean(traces)) if traces else None}


def density(nodes: list[list[float]], weights: list[list[float]], grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed SLQ density on ``grid`` (integrates to ~1)."""
    out = np.zeros_like(grid, dtype=float)
    if not nodes:
        return out
    for nd, wt in zip(nodes, weights):
        nd, wt = np.asarray(nd)[:, None], np.asarray(wt)[:, None]
        out += (wt * np.exp(-0.5 * ((grid[None, :] - nd) / sigma) ** 2)).sum(0)
    return out / (len(nodes) * sigma * math.sqrt(2 * math.pi))


def analyze(matvec: MatVec, n: int, *, top_k: int = 5, iters: int = 100, tol: float = 1e-6,
            trace_samples: int = 100, slq_vectors: int = 4, seed: int = 0, device="cpu") -> dict:
    """Top eigenvalues, trace and spectral density of one Hessian."""
    t0 = time.perf_counter()
    out, krylov = top_eigenvalues(matvec, n, top_k, iters, tol, seed, device, keep_basis=trace_samples > 0)
    out["time_eigen_s"] = round(time.perf_counter() - t0, 3)
    if krylov.invariant and krylov.iterations == n:
        out["trace_krylov"] = float(np.sum(krylov.alphas))  # the Krylov space is all of R^n: exact
    if trace_samples > 0:
        t1 = time.perf_counter()
        out["trace"] = hutchinson(matvec, n, trace_samples, seed + 1, device, krylov=krylov)
        out["trace"]["time_s"] = round(time.perf_counter() - t1, 3)
    del krylov
    if slq_vectors > 0:
        t1 = time.perf_counter()
        out["density"] = slq(matvec, n, slq_vectors, iters, seed + 2, device)
        out["density"]["time_s"] = round(time.perf_counter() - t1, 3)
    return out


# ---------------------------------------------------------------- PINN problems


def targets(problem, names: Sequence[str] | None = None, chunk: int = 0
            ) -> list[tuple[str, float | None, list[Callable[[], Tensor]]]]:
    """(name, weight, loss pieces) for the total loss and the chosen terms (each ``weight * term``).

    ``chunk`` > 0: each term is split into pieces of at most ``chunk`` points whose losses add up to
    the term's (``weight * mean`` over the chunk, scaled by its share of the points), for an
    :class:`HVP` whose memory is bounded by one chunk."""
    from .errors import PinnConfigError
    from .problem import mse, pointwise_sq

    known = [t.name for t in problem.terms]
    chosen = known if names is None else [str(x) for x in names if str(x) != "total"]
    causal = problem.causal
    if causal is not None:  # the PDE term as training weights it: chunk weights at these parameters, constant
        problem.freeze_causal()
    bad = [x for x in chosen if x not in known]
    if bad:
        raise PinnConfigError(f"hessian.terms: {bad[0]!r} is not a loss term; terms: total, {', '.join(known)}")

    def piece(term, sl: slice):
        def fn():
            n = len(term.x)
            x = term.x[sl]
            normals = None if term.normals is None else term.normals[sl]
            # a term of network values only needs no Taylor pass: plain forward (autograd engine)
            engine = term.engine if term.needs else "autograd"
            f = problem.engine.fields(x, term.needs, normals, engine)
            if causal is not None and term is problem.terms[0]:  # mean over chunks of w_i * chunk mean
                ids = causal.ids[sl]
                sq = pointwise_sq(term.residual(f), len(x))
                return term.weight * (causal.frozen[ids] * sq / causal.counts[ids]).sum() / causal.chunks
            return term.weight * mse(term.residual(f)) * (len(x) / n)
        return fn

    def pieces(term) -> list[Callable[[], Tensor]]:
        n = len(term.x)
        size = chunk if chunk and chunk < n else n
        return [piece(term, slice(a, a + size)) for a in range(0, n, size)]

    total = [lambda: problem.loss()[0]] if not chunk else [p for t in problem.terms for p in pieces(t)]
    out = [("total", None, total)]
    out += [(t.name, t.weight, pieces(t)) for t in problem.terms if t.name in chosen]
    return out


def top_eigenvalue(problem, iters: int = 20, tol: float = 1e-3, seed: int = 0) -> float:
    """Largest eigenvalue of the total-loss Hessian on the problem's current points (few Lanczos steps)."""
    from .networks import trainable

    hvp = HVP(lambda: problem.loss()[0], trainable(problem.net))
    try:
        res, _ = top_eigenvalues(hvp, hvp.n, 1, iters, tol, seed, hvp.device)
    finally:
        hvp.release()
    return res["top_eigenvalues"][0]


def log_top_eigenvalue(cfg, problem, history: list[dict], row: dict, columns: list[str]) -> None:
    """Training hook for ``analysis.hessian_every=N``: put the top eigenvalue into ``row``.

    Computed on the first logged row at or after each multiple of N (history.csv rows exist only
    every ``trainer.log_every`` steps); the column ``hessian_top`` is added once.
    """
    every = int(cfg.analysis.hessian_every)
    if every <= 0:
        return
    if "hessian_top" not in columns:
        columns.append("hessian_top")
    prev = history[-1]["step"] if history else 0
    step = row["step"]
    if step // every > prev // every or (not history and step % every == 0):
        analysis = cfg.analysis
        iters = int(analysis.get("hessian_iters", 20) or 20)
        row["hessian_top"] = top_eigenvalue(problem, iters=iters)
        log.info("step %d top Hessian eigenvalue %.4e", step, row["hessian_top"])


def subsample(problem, points: int, seed: int = 0) -> dict[str, int]:
    """Keep at most ``points`` points per term (a fixed random subset); returns the counts used."""
    gen = torch.Generator().manual_seed(seed)
    counts = {}
    for t in problem.terms:
        n = len(t.x)
        if points and n > points:
            idx = torch.randperm(n, generator=gen, device="cpu")[:points].sort().values.to(t.x.device)
            t.x = t.x[idx]
            if t.normals is not None:
                t.normals = t.normals[idx]
        counts[t.name] = len(t.x)
    return counts


# ---------------------------------------------------------------- figure


def plot_spectrum(results: dict, path, sigma_rel: float = 0.01) -> None:
    """One column per loss: SLQ density (log scale) against eigenvalue with the top-k marked, and
    the spectral mass against log10 |eigenvalue| (positive and negative parts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(2, len(names), figsize=(4.6 * len(names), 7), squeeze=False)
    for c, name in enumerate(names):
        r = results[name]
        dens = r.get("density")
        top = r["top_eigenvalues"]
        lo = min(r["lambda_min"], 0.0)
        hi = max(r["lambda_max"], 0.0)
        if dens:
            allnodes = np.concatenate([np.asarray(x) for x in dens["nodes"]])
            lo, hi = min(lo, allnodes.min()), max(hi, allnodes.max())
        span = (hi - lo) or 1.0
        a = ax[0, c]
        if dens:
            grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 1000)
            d = density(dens["nodes"], dens["weights"], grid, sigma_rel * span)
            a.semilogy(grid, np.maximum(d, 1e-12), color="tab:blue", lw=1.2, label="SLQ density")
            a.set_ylim(bottom=max(1e-8, d.max() * 1e-10))
        for i, v in enumerate(top):
            a.axvline(v, color="tab:red", lw=0.8, ls="--", label="top-k" if i == 0 else None)
        a.set_title(f"{name}: λmax {r['lambda_max']:.3g}" + (
            f", tr {r['trace']['estimate']:.3g}" if r.get("trace") else ""))
        a.set_xlabel("eigenvalue")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
        a.grid(True, alpha=0.3)
        b = ax[1, c]
        if dens:
            for sign, color, label in ((1, "tab:blue", "λ > 0"), (-1, "tab:orange", "λ < 0")):
                vals, wts = [], []
                for nd, wt in zip(dens["nodes"], dens["weights"]):
                    nd, wt = np.asarray(nd), np.asarray(wt)
                    keep = sign * nd > 0
                    vals.append(np.log10(np.abs(nd[keep])))
                    wts.append(wt[keep] / len(dens["nodes"]))
                vals, wts = np.concatenate(vals), np.concatenate(wts)
                if len(vals):
                    b.hist(vals, bins=40, weights=wts, color=color, alpha=0.6, label=label)
            b.set_yscale("log")
        b.set_xlabel("log10 |eigenvalue|")
        b.set_ylabel("spectral mass")
        if b.get_legend_handles_labels()[0]:
            b.legend(fontsize=7)
        else:
            b.text(0.5, 0.5, "no density (hessian.slq_vectors=0)", ha="center", va="center", transform=b.transAxes)
        b.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
