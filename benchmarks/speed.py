"""Speed table: one Adam step of a PINN, pinn's derivative engines against nested autograd and DeepXDE.

Usage: python benchmarks/speed.py [--quick] [--deepxde] [--no-compile] [--steps N] [--threads N] ...

One process, side by side: for each equation (heat, poisson2d, burgers) every variant starts from
the same initial weights and minimises the same loss on the same points (8192 interior + 1024
boundary/initial, MLP 2 -> [50] x 4 -> 1 tanh, float32, Adam lr 1e-3). Variants take turns in
rounds of a few steps, in a fresh random order each round; a ratio is the median over rounds of
the two variants' medians within the same round, so a load burst hits both sides of it. Reported:
median and min ms per step, those paired ratios to nested autograd and to DeepXDE with their
spread, compile time, peak memory of a step, rel L2 against the exact solution after the same
number of steps, and the largest weight difference from nested autograd's network (the same
numerics, not only a similar error). The last line is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pinn_cli.config import resolve_device  # noqa: E402
from pinn_cli.errors import PinnConfigError  # noqa: E402
from pinn_cli.paths import config_dir  # noqa: E402
from pinn_cli.speed import tune_malloc  # noqa: E402
from pinn_cli.training import build  # noqa: E402

EQUATIONS = ("heat", "poisson2d", "burgers")
NESTED = "nested autograd"
DEEPXDE = "DeepXDE"
DEFAULT = "pinn forward"  # what `pinn train` uses: derivatives=auto resolves to forward on an MLP
FLOOR = "GEMM floor (pinn forward's matmuls + Adam, nothing else)"
FLOOR_HOT = "GEMM floor, hot (the same on shared tensors)"
GEMMS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default,
         torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default)
CONTROL = "pinn autograd"  # the same algorithm as nested autograd: its ratio says how noisy the run was
DEEPXDE_VERSION = "1.15.0"
StepFn = Callable[[], None]


@dataclass
class Variant:
    """One way of training: ``step`` runs one Adam step; ``predict`` evaluates the network."""

    name: str
    step: StepFn | None
    predict: Callable[[torch.Tensor], torch.Tensor] | None
    note: str = ""
    times: list[float] = field(default_factory=list)
    rounds: list[list[float]] = field(default_factory=list)  # step times, one list per round
    steps_done: int = 0
    compile_s: float | None = None
    peak_mb: float | None = None
    rel_l2: float | None = None
    max_dw: float | None = None
    graphs: bool = False  # CUDA graphs: their memory pool is taken at capture, before any measured step


def make_cfg(equation: str, args: argparse.Namespace, derivatives: str):
    timed = equation != "poisson2d"  # time-dependent: half the boundary budget goes to t = t0
    n_b = args.n_boundary // 2 if timed else args.n_boundary
    overrides = [
        f"equation={equation}", f"derivatives={derivatives}", f"precision={args.precision}",
        f"device={args.device}", f"network.width={args.width}", f"network.depth={args.depth}",
        "network.activation=tanh", f"sampler.n_interior={args.n_interior}", f"sampler.n_boundary={n_b}",
        f"sampler.n_initial={args.n_boundary - n_b if timed else n_b}", "sampler.name=lhs", f"seed={args.seed}",
        "trainer.progress=false", f"trainer.eval_points={args.eval_points}",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


# ---------------------------------------------------------------- nested autograd, as a user writes it
def grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)[0]


def nested_loss(equation: str, net: torch.nn.Module, eq, points: dict[str, torch.Tensor]) -> torch.Tensor:
    """PDE residual with nested torch.autograd.grad, plus the initial/boundary terms."""
    x = points["pde"].clone().requires_grad_(True)
    u = net(x)
    du = grad(u, x)
    u_x, u_2 = du[:, :1], du[:, 1:2]  # u_2 is u_t (heat, burgers) or u_y (poisson2d)
    u_xx = grad(u_x, x)[:, :1]
    if equation == "heat":
        r = u_2 - eq.alpha * u_xx
    elif equation == "burgers":
        r = u_2 + u * u_x - eq.nu * u_xx
    else:
        u_yy = grad(u_2, x)[:, 1:2]
        src = -(math.pi**2 / 2) * torch.sin(math.pi * (x[:, :1] + 1) / 2) * torch.sin(math.pi * (x[:, 1:2] + 1) / 2)
        r = u_xx + u_yy - src
    loss = r.square().mean() + net(points["bc"]).square().mean()
    if "ic" in points:
        xi = points["ic"]
        sign = 1.0 if equation == "burgers" else -1.0  # burgers: u(x,0) = -sin(pi x); heat: sin(pi x)
        loss = loss + (net(xi) + sign * torch.sin(math.pi * xi[:, :1])).square().mean()
    return loss


def adam_step(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], lr: float) -> StepFn:
    opt = torch.optim.Adam(params, lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


def compiles(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> tuple[Callable | None, str]:
    """torch.compile ``fn`` and run one forward and backward; (None, reason) when that fails."""
    try:
        cfn = torch.compile(fn, dynamic=False)
        torch.autograd.grad(cfn(), params, allow_unused=True)
        return cfn, ""
    except Exception as err:  # noqa: BLE001 - report any compiler failure as such
        return None, f"fails: {type(err).__name__}: {str(err).strip().splitlines()[0][:90] if str(err).strip() else ''}"


# ---------------------------------------------------------------- variants
def nested_variants(equation: str, base, points, args) -> list[Variant]:
    out = []
    for compiled in (False, True) if args.compile else (False,):
        net = copy.deepcopy(base.net)
        params = list(net.parameters())
        fn = lambda net=net: nested_loss(equation, net, base.equation, points)
        name = NESTED + (" + compile" if compiled else "")
        if compiled:
            fn, note = compiles(fn, params)
            if fn is None:
                out.append(Variant(name, None, None, note))
                continue
        out.append(Variant(name, adam_step(params, fn, args.lr), net))
    return out


def pinn_variants(equation: str, base, args) -> list[Variant]:
    out = []
    cuda = torch.device(args.device).type == "cuda"
    for engine in ("autograd", "forward"):
        # on CUDA pinn compiles with mode="reduce-overhead" (CUDA graphs); the default mode shows their share
        settings = ("false", "true", "default") if cuda and engine == "forward" else ("false", "true")
        for setting in settings if args.compile else ("false",):
            compiled = setting != "false"
            setup = build(make_cfg(equation, args, engine))
            setup.net.load_state_dict(base.net.state_dict())
            setup.problem.load_state(base.problem.state())
            setup.problem.plan()
            setup.problem.configure(setting)
            name = f"pinn {engine}" + (" + compile" if compiled else "")
            graphs = cuda and setting == "true"  # mode reduce-overhead
            if cuda and compiled and engine == "forward":
                name += " (CUDA graphs)" if graphs else " (no CUDA graphs)"
            params = list(setup.net.parameters())
            loss = lambda p=setup.problem: p.loss()[0]
            step = adam_step(params, loss, args.lr)
            note = ""
            if compiled:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    step()  # compiles (or falls back to eager, logging why)
                    compile_s = time.perf_counter() - t0
                if not setup.problem.compiled:
                    why = "needs double backward" if engine == "autograd" else "see the log"
                    out.append(Variant(name, None, None, f"fails ({why}): pinn falls back to eager"))
                    continue
                note = "1 step taken while compiling (inductor's on-disk cache may be warm)"
            v = Variant(name, step, setup.net, note)
            v.steps_done = 1 if compiled else 0
            v.compile_s = compile_s if compiled else None
            v.graphs = graphs
            out.append(v)
    return out


def device_scope(device: str):
    """``device`` as torch's default device inside the block; on the CPU, no scope at all: torch's
    device mode intercepts every call, which would slow the DeepXDE row alone."""
    return contextlib.nullcontext() if torch.device(device).type == "cpu" else torch.device(device)


def deepxde_variant(equation: str, base, points, args) -> Variant:
    """DeepXDE's own API (PyTorch backend) on the same points, loss and initial weights: the interior
    points as anchors, the boundary and initial values as ``PointSetBC`` (its ``DirichletBC``/``IC`` on
    anchors would also average the PDE residual over the boundary points: another loss)."""
    dtype = torch.get_default_dtype()
    try:
        dde = import_deepxde()
        # DeepXDE makes cuda torch's default device wherever there is one (at import); its network and
        # the tensors it makes from numpy at every step must be on the bench's device, and no other
        # variant may see that default
        torch.set_default_device(None)
        with device_scope(args.device):
            return _deepxde_variant(dde, equation, base, points, args)
    except Exception as err:  # noqa: BLE001 - any import or install failure: report it in the row
        return Variant(DEEPXDE, None, None, f"n/a ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
    finally:
        torch.set_default_dtype(dtype)  # its set_default_float sets it for everyone
        torch.set_default_device(None)


def _deepxde_variant(dde, equation: str, base, points, args) -> Variant:
    eq = base.equation
    lo, hi = base.domain.lo, base.domain.hi
    dde.config.set_default_float(args.precision)
    if equation == "poisson2d":
        geom = dde.geometry.Rectangle(lo.tolist(), hi.tolist())
    else:
        geom = dde.geometry.GeometryXTime(dde.geometry.Interval(lo[0], hi[0]), dde.geometry.TimeDomain(lo[1], hi[1]))

    def pde(x, u):
        u_x = dde.grad.jacobian(u, x, i=0, j=0)
        u_xx = dde.grad.hessian(u, x, i=0, j=0)
        if equation == "heat":
            return dde.grad.jacobian(u, x, i=0, j=1) - eq.alpha * u_xx
        if equation == "burgers":
            return dde.grad.jacobian(u, x, i=0, j=1) + u * u_x - eq.nu * u_xx
        src = -(math.pi**2 / 2) * torch.sin(math.pi * (x[:, :1] + 1) / 2) * torch.sin(math.pi * (x[:, 1:2] + 1) / 2)
        return u_xx + dde.grad.hessian(u, x, i=1, j=1) - src

    np_dtype = np.float32 if args.precision == "float32" else np.float64
    bc = points["bc"].cpu().numpy()
    conds = [dde.icbc.PointSetBC(bc, np.zeros((len(bc), 1), np_dtype))]
    if "ic" in points:
        ic = points["ic"].cpu().numpy()
        sign = -1.0 if equation == "burgers" else 1.0
        conds.append(dde.icbc.PointSetBC(ic, (sign * np.sin(np.pi * ic[:, :1])).astype(np_dtype)))
    data = dde.data.PDE(geom, pde, conds, num_domain=0, num_boundary=0, anchors=points["pde"].cpu().numpy())
    net = dde.nn.FNN([2] + [args.width] * (args.depth) + [1], "tanh", "Glorot normal")
    scale, shift = base.net.in_scale.clone(), base.net.in_shift.clone()
    net.apply_feature_transform(lambda x: x * scale + shift)
    with torch.no_grad():
        for mine, theirs in zip(base.net.layers, net.linears):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    model = dde.Model(data, net)
    model.compile("adam", lr=args.lr)
    model.train(iterations=1, display_every=10**9, verbose=0)  # sets up its training state
    ts = model.train_state

    def step() -> None:  # the step Model.train repeats, without its evaluations of the test loss
        with device_scope(args.device):
            model._train_step(ts.X_train, ts.y_train, ts.train_aux_vars)

    rows = ts.X_train.shape[0]
    v = Variant(DEEPXDE, step, net, f"{dde.__version__}, Model._train_step; same loss (PointSetBC), but its "
                f"residual runs on all {rows} rows, boundary ones too (DeepXDE's design)")
    v.steps_done = 1
    return v


def import_deepxde():
    """Import DeepXDE with the PyTorch backend, pip-installing it into this environment if missing."""
    os.environ["DDE_BACKEND"] = "pytorch"
    try:
        import deepxde
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"deepxde=={DEEPXDE_VERSION}"], check=True,
                       timeout=600)
        import deepxde
    return deepxde


# ---------------------------------------------------------------- the matmul floor
class _GemmRecorder(TorchDispatchMode):
    """Records every matrix product run under it: (op, argument specs, kwargs)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in GEMMS:
            spec = lambda a: ("T", a.shape, a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor) else a
            self.calls.append((func, [spec(a) for a in args], {k: spec(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def _materialise(spec, gen: torch.Generator):
    """A tensor of the recorded shape, strides, dtype and device (a transposed view stays transposed)."""
    if not (isinstance(spec, tuple) and spec and spec[0] == "T"):
        return spec
    _, shape, stride, dtype, device = spec
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    base = torch.randn(extent, generator=gen, dtype=dtype).to(device) * 0.1
    return base.as_strided(shape, stride)


def gemm_floor_variants(source: Variant) -> list[Variant]:
    """The matrix products of one of ``source``'s steps (recorded, with their shapes, strides and
    order), then an Adam update of the same parameters; no elementwise work, so no engine that runs
    these products on data of these sizes has a better ratio. Two rows: every product on tensors of
    its own (as in the step, where inputs come cold from memory), and all products of one shape on
    one shared tensor (inputs hot in cache: what a cache-blocked fused kernel could at best reach)."""
    rec = _GemmRecorder()
    with rec:
        source.step()
    source.steps_done += 1
    flops = sum(2 * math.prod(a[1][-2:]) * b[1][-1] * (a[1][0] if len(a[1]) == 3 else 1)
                for f, args, _ in rec.calls for a, b in [args[-2:]])
    out = []
    for name, shared in ((FLOOR, False), (FLOOR_HOT, True)):
        gen, pool = torch.Generator().manual_seed(0), {}

        def tensor(spec, pool=pool, gen=gen, shared=shared):
            if not shared or not (isinstance(spec, tuple) and spec and spec[0] == "T"):
                return _materialise(spec, gen)
            return pool.setdefault(spec[1:], _materialise(spec, gen))

        calls = [(f, [tensor(a) for a in args], {k: tensor(v) for k, v in kw.items()}) for f, args, kw in rec.calls]
        params = [p.detach().clone().requires_grad_(True) for p in source.predict.parameters()]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.Adam(params, lr=1e-3)

        def step(calls=calls, opt=opt) -> None:
            for f, args, kw in calls:
                f(*args, **kw)
            opt.step()

        where = f"on {len(pool)} shared tensors (hot in cache)" if shared else "each on tensors of its own"
        out.append(Variant(name, step, None, f"not a training step: the {len(calls)} matrix products "
                           f"({flops / 1e9:.2f} GFLOP) of one pinn forward step, {where}, and its Adam update"))
    return out


# ---------------------------------------------------------------- measuring
def clock(kind: str) -> Callable[[], float]:
    return time.thread_time if kind == "cpu" else time.perf_counter


def peak_step_memory(v: Variant, device: torch.device) -> float | None:
    """Peak memory (MB) of one step above what was resident before it: CUDA allocator stats, or on
    Linux the process's peak RSS after handing freed heap memory back (malloc_trim) and resetting it."""
    gc.collect()
    if device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        v.step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        v.step()
        return (_status_kb("VmHWM") - base) / 1024
    except OSError:
        return None


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)


def run_equation(equation: str, args: argparse.Namespace, device: torch.device) -> list[Variant]:
    base = build(make_cfg(equation, args, "forward"))
    base.problem.sample(np.random.default_rng(args.seed))
    points = {t.name: t.x for t in base.problem.terms}
    variants = nested_variants(equation, base, points, args)
    if args.deepxde:
        variants.append(deepxde_variant(equation, base, points, args))
    variants += pinn_variants(equation, base, args)
    default = next(v for v in variants if v.name == DEFAULT)
    variants += gemm_floor_variants(default)
    live = [v for v in variants if v.step is not None]
    tick = clock(args.clock)
    sync = {"cuda": torch.cuda.synchronize, "mps": getattr(torch, "mps", None) and torch.mps.synchronize}.get(
        device.type) or (lambda: None)
    for v in live:
        for _ in range(args.warmup):
            v.step()
            v.steps_done += 1
    order = random.Random(args.seed)
    while any(v.steps_done < args.steps for v in live):
        for v in order.sample(live, len(live)):
            times = []
            for _ in range(min(args.round, args.steps - v.steps_done)):
                sync()
                t0 = tick()
                v.step()
                sync()
                times.append(tick() - t0)
                v.steps_done += 1
            v.times += times
            v.rounds.append(times)
    exact = base.evaluator.exact
    nested = next((v for v in live if v.name == NESTED), None)
    for v in live:
        if v.predict is None:
            continue
        with torch.no_grad():
            pred = v.predict(base.evaluator.x)
        v.rel_l2 = (torch.linalg.vector_norm(pred - exact) / torch.linalg.vector_norm(exact)).item()
        if nested is not None:
            v.max_dw = max_weight_difference(v.predict, nested.predict)
    if args.memory:  # after the figures above: it takes one more step
        for v in live:
            v.peak_mb = None if v.graphs else peak_step_memory(v, device)
    return variants


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float | None:
    """Largest |w_a - w_b| over the Linear layers' weights and biases (None if the shapes differ)."""
    wa = [t for m in a.modules() if isinstance(m, torch.nn.Linear) for t in (m.weight, m.bias)]
    wb = [t for m in b.modules() if isinstance(m, torch.nn.Linear) for t in (m.weight, m.bias)]
    if len(wa) != len(wb) or any(x.shape != y.shape for x, y in zip(wa, wb)):
        return None
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(wa, wb))


def paired_ratio(ref: Variant, v: Variant) -> tuple[float, float, float] | None:
    """``ref``'s median step over ``v``'s, round by round (both ran within the same round): the median
    of those ratios, and their 25th and 75th percentiles."""
    ratios = [statistics.median(r) / statistics.median(t) for r, t in zip(ref.rounds, v.rounds) if r and t]
    if not ratios:
        return None
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def summarise(equation: str, variants: list[Variant]) -> list[dict]:
    timed = {v.name: v for v in variants if v.times}
    rows = []
    for v in variants:
        row = {"equation": equation, "variant": v.name, "note": v.note}
        if v.times:
            row.update({"median_ms": 1e3 * statistics.median(v.times), "min_ms": 1e3 * min(v.times),
                        "timed_steps": len(v.times), "steps": v.steps_done, "compile_s": v.compile_s,
                        "peak_mb": v.peak_mb, "rel_l2": v.rel_l2, "max_dw_nested": v.max_dw})
            for key, ref in (("x_nested", NESTED), ("x_deepxde", DEEPXDE)):
                pr = paired_ratio(timed[ref], v) if ref in timed else None
                row[key] = pr[0] if pr else None
                row[key + "_iqr"] = [pr[1], pr[2]] if pr else None
        rows.append(row)
    return rows


def noise_warning(rows: list[dict]) -> str | None:
    """pinn's autograd engine runs nested autograd's algorithm: a ratio far from 1 means the machine's
    load moved during the run and the other ratios cannot be trusted."""
    bad = [f"{r['equation']} {r['x_nested']:.2f}" for r in rows
           if r["variant"] == CONTROL and r.get("x_nested") and not 0.85 <= r["x_nested"] <= 1.15]
    return ("warning: the control ratio (pinn autograd over nested autograd, the same algorithm) is "
            f"{', '.join(bad)}, not ~1: the machine's load changed during the run; run again") if bad else None


def table(rows: list[dict]) -> str:
    fmt = lambda x, f: "n/a" if x is None else format(x, f)
    ratio = lambda r, k: "n/a" if r[k] is None else f"{r[k]:.2f} ({r[k + '_iqr'][0]:.2f}–{r[k + '_iqr'][1]:.2f})"
    lines = ["| equation | variant | median ms/step | min ms | x nested autograd (IQR) | x DeepXDE (IQR) "
             "| compile s | peak MB | rel L2 | max abs dw vs nested | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "median_ms" not in r:
            lines.append(f"| {r['equation']} | {r['variant']} | – | – | – | – | – | – | – | – | {r['note']} |")
            continue
        lines.append(
            f"| {r['equation']} | {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} "
            f"| {ratio(r, 'x_nested')} | {ratio(r, 'x_deepxde')} | {fmt(r['compile_s'], '.0f')} "
            f"| {fmt(r['peak_mb'], '.0f')} | {fmt(r['rel_l2'], '.2e')} | {fmt(r['max_dw_nested'], '.1e')} | {r['note']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("equations", nargs="*", default=list(EQUATIONS), help="equations (default: heat poisson2d burgers)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 2 timed steps, no compile, no DeepXDE")
    p.add_argument("--deepxde", action="store_true",
                   help=f"include DeepXDE (deepxde=={DEEPXDE_VERSION} pip-installed into this environment if missing)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variants")
    p.add_argument("--steps", type=int, default=200, help="Adam steps per variant (all timed but the warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    p.add_argument("--round", type=int, default=10, help="steps a variant takes per turn")
    p.add_argument("--n-interior", type=int, default=8192)
    p.add_argument("--n-boundary", type=int, default=1024, help="boundary + initial points")
    p.add_argument("--width", type=int, default=50)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--precision", default="float32", choices=("float32", "float64"))
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu, as pinn train), cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall time, or this thread's CPU time (steadier on a loaded machine; only with --threads 1)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-points", type=int, default=10000)
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu counts the calling thread's CPU time only: use it with --threads 1")
    if args.quick:
        args.compile, args.deepxde = False, False
        args.steps, args.warmup, args.round = 3, 1, 1
        args.n_interior, args.n_boundary, args.width, args.depth, args.eval_points = 256, 64, 16, 2, 400
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except PinnConfigError as err:
        sys.exit(f"speed.py: error: {err}")
    if device.type != "cpu" and args.clock == "cpu":
        sys.exit("speed.py: error: --clock cpu cannot see time spent on the GPU: use the wall clock there")
    args.device = str(device)
    started = time.perf_counter()
    rows = []
    for equation in args.equations:
        rows += summarise(equation, run_equation(equation, args, device))
        print(f"[{equation} done, {time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    print(table(rows))
    warning = None if args.quick else noise_warning(rows)  # tiny sizes: Python overhead, not load, sets it
    if warning:
        print(f"\n{warning}")
    print(f"\n{args.precision}, {args.n_interior} interior + {args.n_boundary} boundary/initial points, "
          f"MLP 2->[{args.width}]x{args.depth}->1 tanh, Adam lr {args.lr}; {args.steps} steps per variant; "
          f"{args.clock} clock; device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "clock": args.clock, "steps": args.steps, "noise_warning": warning, "results": rows}))


if __name__ == "__main__":
    main()
