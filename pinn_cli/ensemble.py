"""Ensembles in one vectorised model: ``trainer.ensemble=N``.

N networks are trained at once with ``torch.func``: their parameters are stacked
(``stack_module_state``) and the whole PINN loss of one member (input derivatives included) is
``vmap``-ed over the members with ``functional_call``. Member ``i`` is initialised, and draws its
collocation points, exactly as a single run with ``seed = seed + i`` would, and every optimizer
decision is per member (Adam is elementwise; the L-BFGS below keeps a history, a direction and a
line search per member), so each member follows its own independent trajectory.

``trainer.ensemble_param=equation.alpha trainer.ensemble_values=[...]`` gives each member its own
value of an equation coefficient: a parameter study as one run.

Input derivatives inside the vmap: the forward (Taylor) engine where it serves the term and works
under ``torch.func`` transforms, else :class:`FuncFields` (nested ``torch.func.jvp``; the
autograd engine's ``torch.autograd.grad`` cannot run inside ``vmap``).
"""
from __future__ import annotations

import copy
import logging
import math
import signal
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn
from torch.func import functional_call, jvp, stack_module_state, vjp, vmap

from . import checkpoint, plots
from .derivatives import Fields
from .errors import PinnConfigError, PinnError
from .metrics import _errors
from .networks import trainable
from .problem import mse

log = logging.getLogger("pinn")

ERROR_KEYS = ("rel_l2", "max_abs_error", "rmse")
CPU_VMAP_POINTS = 1024  # per member, all terms: above this a CPU trains the members one after another


# ---------------------------------------------------------------- configuration


def settings(cfg: DictConfig) -> tuple[int, str | None, list[float] | None]:
    """(members, coefficient name or None, per-member values or None), checked with one-line errors."""
    t = cfg.trainer
    n = t.get("ensemble", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise PinnConfigError(f"trainer.ensemble={n!r} is invalid; it must be a positive integer")
    param, values = t.get("ensemble_param"), t.get("ensemble_values")
    if param in (None, "", "null", "none"):
        if values is not None:
            raise PinnConfigError("trainer.ensemble_values is set but trainer.ensemble_param is not "
                                  "(e.g. trainer.ensemble_param=equation.alpha)")
        return n, None, None
    name = str(param)
    from .training import build_equation

    eq = build_equation(cfg.equation)
    accepted = [f"equation.{k}" for k in type(eq).params]
    accepted += [f"equation.params.{k}" for k in getattr(eq, "values", {})]  # an equation written in YAML
    if name not in accepted:
        raise PinnConfigError(f"trainer.ensemble_param={name!r} is not a coefficient of equation "
                              f"{cfg.equation.get('name')}; its coefficients: {', '.join(accepted) or 'none'}")
    key = name.split(".", 1)[1]
    if values is None:
        raise PinnConfigError(f"trainer.ensemble_param={name} needs trainer.ensemble_values=[v1,...,v{n}]")
    values = list(OmegaConf.to_container(values)) if not isinstance(values, (list, tuple)) else list(values)
    if len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise PinnConfigError(f"trainer.ensemble_values={values} is invalid; it must be {n} numbers "
                              f"(one per member, trainer.ensemble={n})")
    return n, key, [float(v) for v in values]


def member_config(cfg: DictConfig, i: int) -> DictConfig:
    """The single-run config member ``i`` corresponds to: seed + i, and its coefficient value."""
    _, key, values = settings(cfg)
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.seed = int(cfg.seed) + i
        out.trainer.ensemble = 1
        out.trainer.ensemble_param = None
        out.trainer.ensemble_values = None
        if key is not None:
            OmegaConf.update(out, f"equation.{key}", values[i], merge=False)
    return out


def member_setup(cfg: DictConfig, i: int):
    """``training.build`` of member ``i`` (its network initialised as that single run's)."""
    from .training import build

    return build(member_config(cfg, i))


# ---------------------------------------------------------------- derivatives inside vmap


class FuncFields(Fields):
    """Input derivatives with ``torch.func`` (so they run inside ``vmap``); outputs support backward and
    double backward. Orders <= 2 use a tower of nested ``vjp`` (as the autograd engine does: one
    backward for all first derivatives, one more per (output, direction) of second derivatives, the
    graphs shared); a derivative that was not declared in ``needs``, or of order > 2, is computed
    on demand by nested ``jvp``. Zeros where there is no dependence, as with the other engines."""

    def __init__(self, net: nn.Module, x: Tensor, inputs: Sequence[str], outputs: Sequence[str],
                 needs=(), normals: Tensor | None = None) -> None:
        super().__init__(x, inputs, outputs, normals)
        self._net = net
        needs = [k for k in needs if k[1]]
        order = max((len(idx) for _, idx in needs), default=0)
        self._vjp2 = None
        if order == 0:
            values = net(x)
        elif order == 1 or not any(len(idx) == 2 for _, idx in needs):
            d1, values = self._first(x)
            self._store_first(d1)
        else:
            d1, self._vjp2, values = vjp(self._first, x, has_aux=True)
            self._store_first(d1)
            self._d1_like = d1
            for k, i in sorted({(k, idx[0]) for k, idx in needs if len(idx) == 2}):
                self._second(k, i)
        for k in range(values.shape[1]):
            self._cache[(k, ())] = values[:, k]

    def _first(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All first derivatives (outputs, N, d) and the values (N, outputs)."""
        values, pullback = vjp(self._net, x)
        eye = torch.eye(values.shape[1], dtype=values.dtype, device=values.device)
        d1 = torch.stack([pullback(eye[k].expand_as(values))[0] for k in range(values.shape[1])])
        return d1, values

    def _store_first(self, d1: Tensor) -> None:
        for k in range(d1.shape[0]):
            for i in range(d1.shape[2]):
                self._cache[(k, (i,))] = d1[k, :, i]

    def _second(self, k: int, i: int) -> None:
        """d/dx_j of d out_k / d x_i for every j, from one more pullback through the first-order graph."""
        cot = torch.zeros_like(self._d1_like)
        cot[k, :, i] = 1.0
        (d2,) = self._vjp2(cot)
        for j in range(d2.shape[1]):
            self._cache.setdefault((k, tuple(sorted((i, j)))), d2[:, j])

    def _direction(self, i: int) -> Tensor:
        e = torch.zeros(self._x.shape[-1], dtype=self._x.dtype, device=self._x.device)
        e[i] = 1.0
        return e.expand_as(self._x)

    def get(self, key):
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out, idx = key
        if len(idx) == 2 and self._vjp2 is not None:
            self._second(out, idx[0])
            return self._cache[key]
        def along(g, e):
            return lambda x: jvp(g, (x,), (e,))[1]

        f = self._net
        for i in idx:
            f = along(f, self._direction(i))
        d = f(self._x)
        for k in range(d.shape[1]):
            self._cache[(k, idx)] = d[:, k]
        return self._cache[key]


@contextmanager
def coefficient(equation, key: str | None, value):
    """Temporarily give ``equation`` a (batched) coefficient value."""
    if key is None:
        yield
        return
    if key.startswith("params."):  # a YAML equation looks its parameters up in ``values`` at call time
        store, name = equation.values, key.split(".", 1)[1]
        get, put = (lambda: store[name]), (lambda v: store.__setitem__(name, v))
    else:
        get, put = (lambda: getattr(equation, key)), (lambda v: setattr(equation, key, v))
    old = get()
    put(value)
    try:
        yield
    finally:
        put(old)


class _Member(nn.Module):
    """The loss of one member; ``functional_call`` swaps in that member's (batched) parameters."""

    def __init__(self, net: nn.Module, problem, key: str | None, use_forward: bool) -> None:
        super().__init__()
        self.net = net
        self.problem = problem
        self.key = key
        self.use_forward = use_forward

    def fields(self, term, x: Tensor, normals: Tensor | None) -> Fields:
        p = self.problem
        if self.use_forward and term.engine == "forward":
            return p.engine.fields(x, term.needs, normals, "forward")
        eq = p.equation
        return FuncFields(self.net, x, eq.inputs, eq.outputs, term.needs, normals)

    def forward(self, xs, normals, coeff):
        terms = self.problem.terms
        with coefficient(self.problem.equation, self.key, coeff):
            parts = [mse(t.residual(self.fields(t, x, nrm))) for t, x, nrm in zip(terms, xs, normals)]
        total = sum(t.weight * p for t, p in zip(terms, parts))
        return total, torch.stack(parts)


class _ProblemLoss(nn.Module):
    """A member's own ``Problem.loss()`` (its points, plan and engines); ``functional_call`` swaps in
    that member's slice of the stacked parameters. Used member by member, outside ``vmap``."""

    def __init__(self, setup) -> None:
        super().__init__()
        self.net = setup.net
        self.problem = setup.problem

    def forward(self):
        total, parts = self.problem.loss()
        return total, torch.stack(list(parts))


def setup_bytes(setup) -> int:
    """Bytes one member holds whatever the chunking: its network, evaluation grid and collocation points."""
    tensors = [*setup.net.parameters(), *setup.net.buffers(),
               *(t for t in vars(setup.evaluator).values() if isinstance(t, Tensor))]
    held = sum(t.numel() * t.element_size() for t in tensors)
    s = setup.cfg.sampler
    points = (int(s.n_interior) + int(s.n_boundary) + int(s.n_initial)) * (len(setup.equation.inputs) + 1)
    return held + points * setup.dtype.itemsize


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's figure; CPU: MemAvailable on Linux), else None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(n: int, first) -> None:
    """Refuse, in one line and before building them, N members that cannot all be held in memory."""
    need, free = n * setup_bytes(first), available_bytes(first.device)
    if free is not None and need > free:
        raise PinnConfigError(
            f"trainer.ensemble={n}: its members need at least {need / 2**30:.1f} GiB (network, points and "
            f"evaluation grid each) and {first.device.type} has {free / 2**30:.1f} GiB free; use fewer members "
            f"or fewer points (sampler.n_*, trainer.eval_points)"
        )
    if n > 1:
        log.info("building %d ensemble members", n)


class Ensemble:
    """N member setups (as single runs with seed + i), their parameters stacked for ``vmap``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.n, self.key, self.values = settings(cfg)
        first = member_setup(cfg, 0)
        check_memory(self.n, first)
        self.setups = [first] + [member_setup(cfg, i) for i in range(1, self.n)]
        base = self.setups[0]
        self.device, self.dtype, self.equation = base.device, base.dtype, base.equation
        self.params, self.buffers = stack_module_state([s.net for s in self.setups])
        self.net = base.net
        self.n_params = sum(p.numel() for p in trainable(base.net))
        self.coeffs = torch.tensor(self.values or [0.0] * self.n, dtype=self.dtype, device=self.device)
        self.term_names = [t.name for t in base.problem.terms]
        self.use_forward = True
        self._member = None
        self.chunk = None  # members per vmap call (None: all; 1: member by member without vmap)

    def choose_chunk(self, setting="auto") -> int:
        """``trainer.ensemble_chunk``: members per vmap call. ``auto``: all of them on a GPU (small
        problems are launch-bound there); on a CPU all of them only for small point sets
        (<= CPU_VMAP_POINTS per member), else member by member, where the derivative engines' fused
        eager kernels beat the traced code vmap needs (measured: benchmarks/ensemble.py)."""
        if setting in (None, "auto"):
            points = sum(len(t.x) for t in self.setups[0].problem.terms)
            size = self.n if self.device.type != "cpu" or points <= CPU_VMAP_POINTS else 1
        else:
            from .config import positive_int

            size = min(positive_int(setting, "trainer.ensemble_chunk"), self.n)
        self.chunk = size
        return size

    def engines(self) -> str:
        """Which derivative code each term uses inside the vmap."""
        return ",".join(f"{t.name}:{'forward' if self.use_forward and t.engine == 'forward' else 'torch.func'}"
                        for t in self.setups[0].problem.terms)

    # -- points
    def sample(self, rngs: list[np.random.Generator], adaptive: bool = False) -> None:
        """Fresh points for every member from its own generator; ``adaptive``: RAD redraws (when
        configured) read each member's current residual, so its network is synced first."""
        if adaptive and self.setups[0].problem.rad is not None:
            self.sync()
        for s, rng in zip(self.setups, rngs):
            s.problem.sample(rng, adaptive=adaptive)
        self._stack()

    def plan(self) -> None:
        for s in self.setups:
            s.problem.plan()
        self._member = _Member(self.net, self.setups[0].problem, self.key, self.use_forward)
        self._whole = [_ProblemLoss(s) for s in self.setups]

    def _stack(self) -> None:
        problems = [s.problem for s in self.setups]
        shapes = {tuple(tuple(t.x.shape) for t in p.terms) for p in problems}
        self.stackable = len(shapes) == 1  # members drew equally many points per term (vmap needs it)
        if not self.stackable:
            self.xs = self.normals = ()
            return
        self.xs = tuple(torch.stack([p.terms[k].x for p in problems]) for k in range(len(self.term_names)))
        self.normals = tuple(
            None if problems[0].terms[k].normals is None else torch.stack([p.terms[k].normals for p in problems])
            for k in range(len(self.term_names))
        )

    def points_state(self) -> list[dict]:
        return [s.problem.state() for s in self.setups]

    def load_points(self, states: list[dict]) -> None:
        for s, st in zip(self.setups, states):
            s.problem.load_state(st)
        self._stack()

    # -- parameters
    def state(self) -> dict:
        return {**{k: v.detach().clone() for k, v in self.params.items()},
                **{k: v.detach().clone() for k, v in self.buffers.items()}}

    def load(self, state: dict) -> None:
        try:
            with torch.no_grad():
                for k, v in {**self.params, **self.buffers}.items():
                    v.copy_(state[k])
        except (KeyError, RuntimeError):
            raise PinnError("the checkpoint's weights do not match this ensemble (network.* or trainer.ensemble differs)") from None

    def sync(self) -> None:
        """Copy the stacked parameters into every member's own network (for plots and analysis)."""
        with torch.no_grad():
            for i, s in enumerate(self.setups):
                s.net.load_state_dict(self.member_state(i))

    def member_state(self, i: int) -> dict:
        return {k: v[i].detach() for k, v in {**self.params, **self.buffers}.items()}

    # -- loss
    def _one(self, params, buffers, xs, normals, coeff):
        sd = {**{f"net.{k}": v for k, v in params.items()}, **{f"net.{k}": v for k, v in buffers.items()}}
        return functional_call(self._member, sd, (xs, normals, coeff))

    def losses(self) -> tuple[Tensor, Tensor]:
        """Per-member total loss (N,) and unweighted terms (N, T)."""
        if self.use_forward and any(t.engine == "forward" for t in self.setups[0].problem.terms):
            try:
                return self._losses()
            except Exception as err:  # noqa: BLE001 - the forward engine does not run under vmap: use torch.func
                log.warning("forward derivative engine unavailable under vmap (%s: %s); using torch.func",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                self.use_forward = self._member.use_forward = False
        return self._losses()

    def _losses(self) -> tuple[Tensor, Tensor]:
        normals_dims = tuple(None if nrm is None else 0 for nrm in self.normals)
        run = vmap(self._one, in_dims=(0, 0, 0, normals_dims, 0))
        size = self.chunk or self.n
        if size == 1 or not self.stackable:  # member by member, without vmap: each member's own Problem.loss (eager fast paths)
            outs = [functional_call(self._whole[i], {f"net.{k}": v[i] for k, v in {**self.params, **self.buffers}.items()}, ())
                    for i in range(self.n)]
            return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
        if size >= self.n:
            return run(self.params, self.buffers, self.xs, self.normals, self.coeffs)
        totals, parts = [], []
        for a in range(0, self.n, size):
            sl = slice(a, a + size)
            t, p = run({k: v[sl] for k, v in self.params.items()}, {k: v[sl] for k, v in self.buffers.items()},
                       tuple(x[sl] for x in self.xs),
                       tuple(None if nrm is None else nrm[sl] for nrm in self.normals), self.coeffs[sl])
            totals.append(t)
            parts.append(p)
        return torch.cat(totals), torch.cat(parts)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Every member's prediction at ``x``: (N, M, outputs)."""
        def one(p, b):
            return functional_call(self.net, (p, b), (x,))
        return vmap(one)(self.params, self.buffers)


# ---------------------------------------------------------------- metrics and figures


def evaluators(ens: Ensemble, resolution: int | None = None) -> list:
    """One evaluator per member (the exact solution depends on the member's coefficient)."""
    if resolution is None:
        return [s.evaluator for s in ens.setups]
    from .metrics import Evaluator

    return [Evaluator(s.equation, s.domain, resolution ** s.domain.dim, s.device, s.dtype) for s in ens.setups]


def member_metrics(ens: Ensemble, evs: list) -> tuple[list[dict], Tensor]:
    """Per-member error figures on the evaluation set (each member's network evaluated exactly as a
    single run's is), and the predictions (N, M, out)."""
    ens.sync()
    per = [ev.metrics(s.net) for ev, s in zip(evs, ens.setups)]
    pred = torch.stack([ev.predict(s.net) for ev, s in zip(evs, ens.setups)])
    return per, pred


def spread(values: np.ndarray) -> np.ndarray:
    """Member standard deviation along axis 0 (ddof=1, as metrics.json's ``ensemble.std``)."""
    return values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(values[0])


def summarise(ens: Ensemble, per_member: list[dict], pred: Tensor, evs: list,
              extra: list[dict] | None = None) -> dict:
    """metrics.json figures: the member mean at top level, then mean/std and every member."""
    stats = {}
    for key in ERROR_KEYS:
        vals = np.array([m[key] for m in per_member], dtype=float)
        stats[key] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    members = []
    for i, m in enumerate(per_member):
        row = {"member": i, "seed": int(ens.cfg.seed) + i}
        if ens.key is not None:
            row[f"equation.{ens.key}"] = ens.values[i]
        row.update(m)
        if extra:
            row.update(extra[i])
        members.append(row)
    info = {"members": ens.n, "param": None if ens.key is None else f"equation.{ens.key}",
            "values": ens.values, "mean": {k: v[0] for k, v in stats.items()},
            "std": {k: v[1] for k, v in stats.items()}}
    if ens.key is None:
        mean_pred = pred.mean(0)
        info["mean_prediction"] = _errors(mean_pred - evs[0].exact, evs[0].exact)
    return {**{k: v[0] for k, v in stats.items()}, "ensemble": info, "members": members}


def ensemble_title(name: str, key: str | None, per_member: list[dict], mean_prediction: dict | None) -> str:
    """solution.png's title, naming whose error each figure is. Seeds: the ensemble-mean prediction's
    (the mean is what the panels draw against the exact solution), then the members' own; a
    coefficient study (``key``): the members' own (one per coefficient value, no mean prediction)."""
    rel = [m["rel_l2"] for m in per_member]
    members = (f"the member's rel L2 {rel[0]:.2e}" if len(rel) == 1 else
               f"members' rel L2 {min(rel):.2e} to {max(rel):.2e} (their mean {np.mean(rel):.2e})")
    if key is not None:
        return f"{name}: {len(rel)} member(s) over equation.{key}\n{members}"
    head = f"{name}: ensemble of {len(rel)} seed(s)"
    if mean_prediction is not None:
        head += f", rel L2 of the ensemble-mean prediction {mean_prediction['rel_l2']:.2e}"
    return f"{head}\n{members}"


def plot_ensemble(ens: Ensemble, evs: list, per_member: list[dict], path: Path,
                  mean_prediction: dict | None = None) -> None:
    """solution.png for an ensemble: every member, the mean and the spread (and the error).
    ``mean_prediction``: the mean prediction's errors on the evaluation set (``summarise``'s), for the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eq = ens.equation
    ens.sync()
    data = [ev.plot_data(s.net) for ev, s in zip(evs, ens.setups)]  # plotting grid, NaN outside the domain
    x, axes = data[0][0], data[0][1]
    p = np.stack([d[2] for d in data])   # (N, M, out)
    ex = np.stack([d[3] for d in data])  # (N, M, out)
    labels = [f"{ens.key}={v:g}" if ens.key else f"seed {int(ens.cfg.seed) + i}"
              for i, v in enumerate(ens.values or [0.0] * ens.n)]
    title = ensemble_title(eq.name, ens.key, per_member, mean_prediction)
    n_out = p.shape[2]
    colors = plt.cm.viridis(np.linspace(0, 0.9, ens.n))
    if len(eq.inputs) == 1:
        order = np.argsort(x[:, 0])
        xs = x[order, 0]
        fig, ax = plt.subplots(2, n_out, figsize=(6.5 * n_out, 6.5), squeeze=False)
        for k in range(n_out):
            a = ax[0, k]
            if ens.key is None:
                mu, sd = p[:, order, k].mean(0), spread(p[:, order, k])
                a.fill_between(xs, mu - 2 * sd, mu + 2 * sd, color="tab:red", alpha=0.25, label="mean ± 2 std")
                a.plot(xs, ex[0, order, k], "k-", lw=2, label="exact")
                a.plot(xs, mu, "r--", lw=1.5, label="ensemble mean")
            for i in range(ens.n):
                a.plot(xs, p[i, order, k], color=colors[i], lw=0.7, alpha=0.8,
                       label=labels[i] if ens.key else None)
                if ens.key is not None:
                    a.plot(xs, ex[i, order, k], color=colors[i], lw=1.5, ls=":")
            a.set_ylabel(eq.outputs[k])
            a.legend(fontsize=7)
            b = ax[1, k]
            for i in range(ens.n):
                b.semilogy(xs, np.abs(p[i, order, k] - ex[i, order, k]) + 1e-300, color=colors[i], lw=0.8)
            if ens.key is None:
                b.semilogy(xs, spread(p[:, order, k]) + 1e-300, "r--", lw=1.2, label="member std")
                b.legend(fontsize=7)
            b.set_ylabel(f"|error| {eq.outputs[k]} per member")
            b.set_xlabel(eq.inputs[0])
    else:
        shape = tuple(len(a) for a in axes)
        sl = (slice(None), slice(None)) + tuple(len(a) // 2 for a in axes[2:])
        flip, extent, xlabel, ylabel = plots.heat_map_axes(eq.inputs, axes, eq.time)
        plane = plots.is_plane(eq.inputs, eq.time)

        def grid(v):
            return v.reshape(shape)[sl].T if flip else v.reshape(shape)[sl]

        if ens.key is None:
            panels = []
            for k in range(n_out):
                mu = p[:, :, k].mean(0)
                panels.append([(grid(mu), f"{eq.outputs[k]}: ensemble mean", "viridis"),
                               (grid(ex[0, :, k]), f"{eq.outputs[k]}: exact", "viridis"),
                               (grid(np.abs(mu - ex[0, :, k])), "|mean - exact|", "magma"),
                               (grid(spread(p[:, :, k])), "member std (spread)", "magma")])
        else:
            panels = [[(grid(p[i, :, k]), f"{labels[i]}: {eq.outputs[k]}", "viridis"),
                       (grid(ex[i, :, k]), "exact", "viridis"),
                       (grid(np.abs(p[i, :, k] - ex[i, :, k])), f"|error|, rel L2 {per_member[i]['rel_l2']:.1e}", "magma")]
                      for i in range(ens.n) for k in range(n_out)]
        fig, ax = plots.heat_map_grid(len(panels), len(panels[0]), extent, plane, cell=(4.2, 3.4))
        for r, row in enumerate(panels):
            ref = row[1][0][np.isfinite(row[1][0])]  # prediction and exact share the exact's colour scale
            scale = {"vmin": float(ref.min()), "vmax": float(ref.max())} if ref.size else {}
            for c, (img, name, cmap) in enumerate(row):
                plots.heat_map(fig, ax[r, c], img, extent, plane, cmap, name, (xlabel, ylabel), title_size=9,
                               **(scale if c < 2 else {}))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_checkpoint(cfg: DictConfig, state: dict, run_dir: Path, resolution: int | None) -> tuple[dict, int]:
    """``pinn evaluate`` of an ensemble checkpoint: per-member metrics, redrawn plots."""
    from .commands.evaluate import read_history

    ens = Ensemble(cfg)
    ens.load(state["model"])
    evs = evaluators(ens, resolution)
    per_member, pred = member_metrics(ens, evs)
    history = read_history(run_dir, state)
    rows = [r for r in history if r.get("step") is not None and r["step"] <= (state.get("step") or 0)]
    extra = [{"final_loss": rows[-1][f"loss_m{i}"]} if rows and rows[-1].get(f"loss_m{i}") is not None else {}
             for i in range(ens.n)]  # each member's loss at the checkpoint, as training reported it
    out = summarise(ens, per_member, pred, evs, extra)
    plot_ensemble(ens, evs, per_member, run_dir / "solution.png", out["ensemble"].get("mean_prediction"))
    if history:
        plots.plot_loss(history, [f"m{i}" for i in range(ens.n)], run_dir / "loss_curve.png")
    base = {"equation": ens.equation.name, "n_params": ens.n_params, "device": str(ens.device),
            "precision": cfg.precision}
    return {**base, **out}, len(evs[0].x)


# ---------------------------------------------------------------- batched L-BFGS


class BatchedLBFGS:
    """L-BFGS for N independent members at once: per-member history, two-loop recursion, and a
    backtracking (Armijo) line search whose step length is chosen per member. A member whose
    gradient or loss change falls below the tolerances stops moving; the others go on."""

    def __init__(self, params: list[Tensor], n: int, lr: float = 1.0, history_size: int = 50,
                 max_ls: int = 25, c1: float = 1e-4, tolerance_grad: float = 1e-15,
                 tolerance_change: float = 1e-16, start_loss: float | None = None) -> None:
        self.params, self.n = params, n
        self.start_loss = start_loss
        self.scale: Tensor | None = None  # per member: start_loss / its loss at the first iteration
        self.lr, self.m, self.max_ls, self.c1 = lr, history_size, max_ls, c1
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        self.s: list[Tensor] = []
        self.y: list[Tensor] = []
        self.rho: list[Tensor] = []
        self.h_diag: Tensor | None = None
        self.done: Tensor | None = None
        self.n_iter = 0
        self._last: tuple | None = None  # (x, f, parts, g, loss) at the point the previous step ended on

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(self.n, -1) for p in self.params], 1)

    def _set(self, flat: Tensor) -> None:
        with torch.no_grad():
            i = 0
            for p in self.params:
                k = p[0].numel()
                p.copy_(flat[:, i:i + k].view_as(p))
                i += k

    def _eval(self, loss_fn) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per member: the loss as the iteration sees it (rescaled to ``start_loss`` at the first call,
        as a single run's L-BFGS does), the terms, the gradient of the rescaled loss, the loss."""
        totals, parts = loss_fn()
        grads = torch.autograd.grad(totals.sum(), self.params, allow_unused=True, materialize_grads=True)
        g = torch.cat([gr.reshape(self.n, -1) for gr in grads], 1)
        f = totals.detach()
        if self.scale is None:
            ok = torch.isfinite(f) & (f > 0) & (self.start_loss is not None)
            self.scale = torch.where(ok, (self.start_loss or 1.0) / torch.where(ok, f, 1.0), 1.0)
        return f * self.scale, parts.detach(), g * self.scale[:, None], f

    def _direction(self, g: Tensor) -> Tensor:
        q = -g
        alphas = []
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * (s * q).sum(1)
            q = q - a[:, None] * y
            alphas.append(a)
        if self.h_diag is not None:
            q = q * self.h_diag[:, None]
        for s, y, rho, a in zip(self.s, self.y, self.rho, reversed(alphas)):
            b = rho * (y * q).sum(1)
            q = q + (a - b)[:, None] * s
        return q

    def step(self, loss_fn) -> tuple[Tensor, Tensor]:
        """One iteration for every member; returns the per-member loss (N,) and terms (N, T) at the
        point the iteration ends at (the model a checkpoint saves, as a single run logs it)."""
        x = self._flat()
        if self._last is not None and torch.equal(self._last[0], x):
            _, f, parts, g, raw = self._last
        else:
            f, parts, g, raw = self._eval(loss_fn)
        if self.done is None:
            self.done = torch.zeros(self.n, dtype=torch.bool, device=x.device)
        self.done |= g.abs().amax(1) <= self.tol_grad
        d = self._direction(g)
        gtd = (g * d).sum(1)
        bad = gtd >= 0
        if bool(bad.any()):  # not a descent direction: steepest descent, forget that member's history
            d[bad] = -g[bad]
            gtd = (g * d).sum(1)
            for rho in self.rho:
                rho[bad] = 0.0
        t = torch.full((self.n,), self.lr, dtype=x.dtype, device=x.device)
        if self.n_iter == 0:
            t = t * torch.clamp(1.0 / g.abs().sum(1), max=1.0)
        t[self.done] = 0.0
        accepted = self.done.clone()
        x_new, g_new, f_new, p_new, r_new = x.clone(), g.clone(), f.clone(), parts.clone(), raw.clone()
        for _ in range(self.max_ls):
            trial = x + t[:, None] * d
            trial[accepted] = x_new[accepted]
            self._set(trial)
            ft, pt, gt, rt = self._eval(loss_fn)
            ok = (~accepted) & torch.isfinite(ft) & (ft <= f + self.c1 * t * gtd)
            x_new[ok], g_new[ok], f_new[ok], p_new[ok], r_new[ok] = trial[ok], gt[ok], ft[ok], pt[ok], rt[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        stuck = ~accepted
        self.done |= stuck
        self._set(x_new)
        s, y = x_new - x, g_new - g
        ys = (y * s).sum(1)
        valid = (ys > 1e-10) & ~self.done
        if bool(valid.any()):
            self.s.append(s)
            self.y.append(y)
            self.rho.append(torch.where(valid, 1.0 / torch.where(valid, ys, 1.0), 0.0))
            if len(self.s) > self.m:
                self.s.pop(0), self.y.pop(0), self.rho.pop(0)
            yy = (y * y).sum(1)
            h = torch.where(valid, ys / torch.where(valid, yy, 1.0), 1.0)
            self.h_diag = h if self.h_diag is None else torch.where(valid, h, self.h_diag)
        self.done |= (f - f_new).abs() < self.tol_change
        self.n_iter += 1
        self._last = (x_new, f_new, p_new, g_new, r_new)
        return r_new, p_new

    def state_dict(self) -> dict:
        return {"s": self.s, "y": self.y, "rho": self.rho, "h_diag": self.h_diag, "done": self.done,
                "n_iter": self.n_iter, "scale": self.scale}

    def load_state_dict(self, st: dict) -> None:
        """Checkpoints load onto the CPU: the history goes to the parameters' device."""
        dev = self.params[0].device
        to = lambda t: None if t is None else t.to(dev)
        self.s, self.y, self.rho = ([to(t) for t in st[k]] for k in ("s", "y", "rho"))
        self.h_diag, self.done, self.n_iter = to(st["h_diag"]), to(st["done"]), st["n_iter"]
        self.scale = to(st.get("scale"))


# ---------------------------------------------------------------- training loop


def run_ensemble(cfg: DictConfig, run_dir: Path | str) -> dict:
    """Train ``trainer.ensemble`` members at once; writes the same run directory as ``run_training``
    (checkpoints, history.csv, metrics.json with every member, loss_curve.png, solution.png)."""
    from .optim import OptimizerSchedule
    from .training import (
        _check_compatible,
        _preemption_handler,
        _Progress,
        _write_history,
        refuse_used_run_dir,
        resample_due,
        resolve_resume,
        row_due,
        say_resume_plan,
        warn_changed_settings,
    )

    run_dir = Path(run_dir)
    from . import distributed

    if distributed.requested():
        raise PinnConfigError("trainer.ensemble runs in one process; launch it without torchrun/several tasks")
    if cfg.trainer.get("causal_chunks"):
        raise PinnConfigError("trainer.causal_chunks is not supported with trainer.ensemble > 1; use one or the other")
    from .speed import compile_setting

    if compile_setting(cfg.trainer.get("compile", "auto")) not in ("auto", "false"):
        log.warning("trainer.compile=%s: an ensemble runs its vmapped torch.func loss eagerly; training "
                    "continues in eager mode", cfg.trainer.compile)
    ens = Ensemble(cfg)
    n = ens.n
    t_cfg = cfg.trainer
    total = t_cfg.steps
    rngs = [np.random.default_rng(int(cfg.seed) + i) for i in range(n)]
    ens.sample(rngs)
    ens.setups[0].problem.check_exact_solution()
    ens.plan()
    ens.choose_chunk(t_cfg.get("ensemble_chunk", "auto"))
    params = [p for p in ens.params.values() if p.requires_grad]
    schedule = OptimizerSchedule(cfg.optimizer, params, total)
    lb = cfg.optimizer.get("lbfgs", {}) or {}
    lbfgs = BatchedLBFGS(params, n, lr=float(lb.get("lr", 1.0)) if schedule.name != "lbfgs" else schedule.lr,
                         history_size=int(lb.get("history_size", 50)), start_loss=schedule.lbfgs_start_loss)
    terms = ens.term_names
    members = [f"m{i}" for i in range(n)]
    columns = ["step", "time_s", "loss", *[f"loss_{t}" for t in terms], "lr", "rel_l2",
               *[f"loss_{m}" for m in members], *[f"rel_l2_{m}" for m in members]]
    ckpt_dir = run_dir / "checkpoints"
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    ens_info = {"n": n, "param": None if ens.key is None else f"equation.{ens.key}", "values": ens.values,
                "seeds": [int(cfg.seed) + i for i in range(n)]}
    hessian_every = int((cfg.get("analysis") or {}).get("hessian_every") or 0)
    if hessian_every:
        columns += ["hessian_top", *[f"hessian_top_{m}" for m in members]]

    history: list[dict] = []
    step, best, elapsed_before = 0, math.inf, 0.0
    resume = resolve_resume(t_cfg.get("resume"), run_dir)
    refuse_used_run_dir(resume, run_dir)
    say_resume_plan(t_cfg.get("resume"), resume, ckpt_dir)
    if resume is not None:
        state = checkpoint.load(resume)
        _check_compatible(state, config_dict, resume)
        if state.get("ensemble", {}).get("n") != n or state["config"]["network"] != config_dict["network"]:
            raise PinnError(f"checkpoint {resume} is not of this ensemble (trainer.ensemble or network.* differs)")
        warn_changed_settings(state["config"], config_dict)
        ens.load(state["model"])
        schedule.load_state_dict(state["optimizer"]["schedule"])
        lbfgs.load_state_dict(state["optimizer"]["lbfgs"])
        ens.load_points(state["points"])
        torch.set_rng_state(state["rng"]["torch"])
        for r, st in zip(rngs, state["rng"]["numpy"]):
            r.bit_generator.state = st
        step, best, history = state["step"], state["best_rel_l2"], state["history"]
        elapsed_before = state.get("elapsed_s", 0.0)
        log.info("resumed from %s at step %d", resume, step)
        # the earlier segment's figures are in history.csv and the checkpoints; until this run ends it
        (run_dir / "metrics.json").unlink(missing_ok=True)  # is running, not preempted

    def snapshot(elapsed: float) -> dict:
        return {
            "model": ens.state(), "ensemble": ens_info, "step": step, "config": config_dict,
            "optimizer": {"schedule": schedule.state_dict(), "lbfgs": lbfgs.state_dict()},
            "rng": {"torch": torch.get_rng_state(), "numpy": [r.bit_generator.state for r in rngs]},
            "best_rel_l2": best, "history": history, "points": ens.points_state(),
            "equation": ens.equation.name, "elapsed_s": elapsed,
        }

    log.info("ensemble of %d: equation=%s%s network=%s params/member=%d device=%s precision=%s %s",
             n, ens.equation.name, f" {ens.key}={ens.values}" if ens.key else "", ens.net.describe(), ens.n_params,
             ens.device,
             cfg.precision, "member by member (trainer.ensemble_chunk=1)" if ens.chunk == 1 else
             f"vmap over {ens.chunk} members at a time, derivatives {ens.engines()}")
    evs = evaluators(ens)
    last: dict = {}

    def loss_fn():
        totals, parts = ens.losses()
        last["totals"], last["parts"] = totals, parts
        return totals.sum(), parts

    progress = _Progress(total, bool(t_cfg.progress), step)
    status, stopped_by = "done", None
    t0 = time.perf_counter()
    with _preemption_handler() as stop:
        try:
            while step < total:
                if schedule.phase(step) == "adam":
                    if resample_due(cfg, step):
                        ens.sample(rngs, adaptive=True)
                    schedule.adam_step(loss_fn)
                    totals, parts = last["totals"].detach(), last["parts"].detach()
                else:
                    totals, parts = lbfgs.step(ens.losses)
                step += 1
                is_last = step >= total
                if row_due(t_cfg, step) or is_last or stop.signal:
                    now = time.perf_counter()
                    if not bool(torch.isfinite(totals).all()):
                        status = "diverged"
                        bad = [i for i in range(n) if not math.isfinite(float(totals[i]))]
                        break
                    tl, pl = totals.tolist(), parts.tolist()
                    row = {"step": step, "time_s": round(elapsed_before + now - t0, 4), "loss": float(np.mean(tl)),
                           "lr": schedule.current_lr(max(step - 1, 0)), "rel_l2": None}
                    row.update({f"loss_{t}": float(np.mean([p[k] for p in pl])) for k, t in enumerate(terms)})
                    row.update({f"loss_{m}": v for m, v in zip(members, tl)})
                    prev = history[-1]["step"] if history else 0
                    if hessian_every and (step // hessian_every > prev // hessian_every
                                          or (not history and step % hessian_every == 0)):
                        from .hessian import top_eigenvalue

                        ens.sync()  # each member's own network and points, as its single run has them
                        tops = [top_eigenvalue(s.problem) for s in ens.setups]
                        row["hessian_top"] = float(np.mean(tops))
                        row.update({f"hessian_top_{m}": v for m, v in zip(members, tops)})
                    if step % t_cfg.eval_every == 0 or is_last:
                        per, _ = member_metrics(ens, evs)
                        rels = [m["rel_l2"] for m in per]
                        row["rel_l2"] = float(np.mean(rels))
                        row.update({f"rel_l2_{m}": v for m, v in zip(members, rels)})
                        if row["rel_l2"] < best:
                            best = row["rel_l2"]
                            checkpoint.save(snapshot(elapsed_before + now - t0), ckpt_dir / "best.pt")
                    history.append(row)
                    progress.report(row, "mean loss")
                    if step % t_cfg.checkpoint_every == 0 or is_last or stop.signal:
                        checkpoint.save(snapshot(elapsed_before + now - t0), ckpt_dir / "last.pt")
                if stop.signal and not is_last:  # a signal during the last step: done, not preempted
                    stopped_by = signal.Signals(stop.signal).name
                    status = "preempted"
                    break
        finally:
            progress.close()
    wall = elapsed_before + time.perf_counter() - t0
    _write_history(history, columns, run_dir / "history.csv")
    plots.plot_loss(history, members, run_dir / "loss_curve.png")
    if status == "diverged":
        raise PinnError(f"training diverged at step {step} (loss of member(s) {', '.join(map(str, bad))} is not "
                        f"finite); {checkpoint.last_good(ckpt_dir)}")
    per_member, pred = member_metrics(ens, evs)
    out = summarise(ens, per_member, pred, evs,
                    extra=[{"final_loss": history[-1][f"loss_{m}"]} if history else {} for m in members])
    mean_rel = out["rel_l2"]
    if not (ckpt_dir / "best.pt").exists() or mean_rel <= best:
        improved = mean_rel < best
        best = min(best, mean_rel)
        checkpoint.save(snapshot(wall), ckpt_dir / "best.pt")
        if improved and (ckpt_dir / "last.pt").exists():  # the same model: its record of the best must agree
            checkpoint.save(snapshot(wall), ckpt_dir / "last.pt")
    if not (ckpt_dir / "last.pt").exists():
        checkpoint.save(snapshot(wall), ckpt_dir / "last.pt")
    final_loss = history[-1]["loss"] if history else float(ens.losses()[0].mean())
    metrics = {
        **{k: out[k] for k in ERROR_KEYS},
        "steps": step, "wall_time_s": round(wall, 3), "n_params": ens.n_params, "device": str(ens.device),
        "final_loss": final_loss, "equation": ens.equation.name, "precision": cfg.precision, "status": status,
        "ensemble": out["ensemble"], "members": out["members"],
    }
    if stopped_by:
        metrics["stopped_by"] = stopped_by
    checkpoint.write_json(metrics, run_dir / "metrics.json")
    plot_ensemble(ens, evs, per_member, run_dir / "solution.png", out["ensemble"].get("mean_prediction"))
    for m in out["members"]:
        log.info("member %d%s: rel_l2 %.4e max_abs_error %.4e", m["member"],
                 f" {ens.key}={m[f'equation.{ens.key}']:g}" if ens.key else f" seed {m['seed']}",
                 m["rel_l2"], m["max_abs_error"])
    stop.chain(signal.Signals[stopped_by] if stopped_by else None)  # submitit requeues, as for a single run
    return metrics
