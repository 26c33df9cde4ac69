"""A PINN problem: an equation's residual and conditions on sampled points, turned into a loss."""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import adaptive
from .derivatives import (
    AutogradFields,
    DerivativeEngine,
    ForwardFields,
    ForwardPlan,
    Key,
    RecordingFields,
    constant_linear_part,
)
from .domains import Box, EmptySelection, PointSet
from .equations.base import Equation, exact_pde_misfit
from .errors import PinnConfigError
from .networks import trainable
from .speed import CompiledLoss, compile_setting
from .taylor import taylor_channels

log = logging.getLogger("pinn")


@dataclass
class Term:
    """One loss term: a residual function on a set of points, with its weight and engine plan."""

    name: str
    residual: Callable
    weight: float
    where: str
    at: dict | None = None
    x: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    needs: set[Key] = field(default_factory=set)
    engine: str = "autograd"
    select: Callable | None = None   # restricts boundary/initial points (Condition.select)
    channels: ForwardPlan | None = None  # forward engine: the channels of this term's pass


@dataclass
class _Pass:
    """Terms (indices into ``Problem.terms``) evaluated in one forward pass: ``lead`` (with derivative
    channels, if any) and riders that need only the network's value, their points appended to the lead's."""

    lead: int | None
    riders: list[int]


def mse(residual) -> torch.Tensor:
    """Mean square of a residual tensor, or the sum of mean squares of a system's residuals."""
    if isinstance(residual, torch.Tensor):
        return residual.square().mean()
    return sum(r.square().mean() for r in residual)


def pointwise_sq(residual, n: int) -> torch.Tensor:
    """Squared residual at each of the ``n`` points, a system's residuals summed: (n,); its mean is ``mse``."""
    rs = (residual,) if isinstance(residual, torch.Tensor) else residual
    return sum(r.square().reshape(n, -1).mean(1) for r in rs)


@dataclass
class Causal:
    """Causal weighting of the PDE residual (Wang, Sankaran & Perdikaris 2022): the time interval is cut
    into ``chunks``; chunk i's mean residual L_i counts with weight exp(-eps * sum of L_k for k < i), so
    later times are fitted only once earlier ones are. Weights are constants to the optimizer."""

    chunks: int
    eps: float
    col: int  # the time input's column
    t0: float
    t1: float
    ids: torch.Tensor | None = None  # chunk of each PDE point
    counts: torch.Tensor | None = None
    frozen: torch.Tensor | None = None  # weights held fixed (L-BFGS blocks), else recomputed each loss
    last: torch.Tensor | None = None  # the weights of the last loss evaluation

    def assign(self, x: torch.Tensor) -> None:
        frac = (x[:, self.col] - self.t0) / (self.t1 - self.t0)
        self.ids = (frac * self.chunks).long().clamp_(0, self.chunks - 1)
        self.counts = torch.bincount(self.ids, minlength=self.chunks).clamp_(min=1).to(x.dtype)

    def chunk_losses(self, sq: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.chunks, dtype=sq.dtype, device=sq.device).index_add_(0, self.ids, sq) / self.counts

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.detach()
        return torch.exp(-self.eps * (torch.cumsum(losses, 0) - losses))


class Problem:
    """Holds the training points for each loss term and computes the weighted PINN loss."""

    def __init__(self, equation: Equation, domain: Box, net: nn.Module, engine: DerivativeEngine,
                 sampler_cfg, device: torch.device, dtype: torch.dtype) -> None:
        self.equation, self.domain, self.net, self.engine = equation, domain, net, engine
        self.sampler = sampler_cfg
        self.device, self.dtype = device, dtype
        self._passes: list[_Pass] = []  # forward-engine passes, set by plan()
        self._planned_with: tuple | None = None  # the equation's coefficients when plan() ran
        self._compiled: CompiledLoss | None = None  # set by configure()
        self.causal: Causal | None = None  # set by set_causal()
        self.rad = adaptive.from_config(sampler_cfg)  # RAD redraws of the PDE points, or None
        self.terms = [Term("pde", equation.residual, equation.weights["pde"], "interior")]
        for cond in equation.conditions():
            at = None
            if cond.on == "points":
                at = {k: list(map(float, v)) for k, v in (cond.at or {}).items()}
            self.terms.append(Term(cond.name, cond.residual, equation.weights[cond.name], cond.on, at,
                                   select=getattr(cond, "select", None)))

    def _draw(self, term: Term, rng: np.random.Generator) -> PointSet:
        try:
            return self._draw_points(term, rng)
        except EmptySelection as err:
            raise PinnConfigError(f"condition {term.name!r}: its {self.equation.selection_name} {err}") from None

    def _draw_points(self, term: Term, rng: np.random.Generator) -> PointSet:
        s = self.sampler
        if term.where == "interior":
            return self.domain.interior(s.n_interior, s.name, rng)
        if term.where == "boundary":
            return self.domain.boundary(s.n_boundary, s.name, rng, select=term.select)
        if term.where == "initial":
            return self.domain.initial(s.n_initial, s.name, rng, select=term.select)
        if term.where == "points":
            cols = [term.at[n] for n in self.equation.inputs]
            return PointSet(np.array(cols, dtype=float).T)
        raise PinnConfigError(f"condition {term.name}: unknown location {term.where!r}")

    def sample(self, rng: np.random.Generator, adaptive: bool = False) -> None:
        """Draw fresh training points for every term; ``adaptive``: the PDE points by RAD (when
        ``sampler.adaptive=rad``), where the current network's residual is large."""
        for term in self.terms:
            rad = adaptive and self.rad is not None and term is self.terms[0]
            ps = self._draw_rad(term, rng) if rad else self._draw(term, rng)
            term.x = torch.as_tensor(ps.x, device=self.device, dtype=self.dtype)
            term.normals = None if ps.normals is None else torch.as_tensor(ps.normals, device=self.device, dtype=self.dtype)
        if self.causal is not None:
            self.causal.assign(self.terms[0].x)

    def check_exact_solution(self, tol: float = 1e-6) -> None:
        """The equation's exact solution must satisfy every condition on the points this domain gives
        (float64, up to 256 points a term). A domain or ``domain.bounds`` that moves a boundary or the
        initial time away from where the solution was derived makes rel L2 meaningless: refuse it."""
        eq = self.equation
        if not eq.has_exact or not getattr(eq, "check_exact", True):
            return
        if not self._check_exact_pde(tol):
            log.info("equation %s: exact() is not differentiable torch code; its checks against the PDE and "
                     "the conditions are skipped", eq.name)
            return
        for term in self.terms[1:]:
            if term.x is None or not len(term.x):
                continue
            pick = torch.linspace(0, len(term.x) - 1, min(256, len(term.x))).long()
            x = term.x[pick].detach().to("cpu", torch.float64)
            normals = None if term.normals is None else term.normals[pick].detach().to("cpu", torch.float64)
            f = AutogradFields(eq.exact, x, eq.inputs, eq.outputs, normals)
            res = term.residual(f)
            worst = max(float(r.detach().abs().max()) for r in (res if isinstance(res, (tuple, list)) else (res,)))
            scale = 1 + float(eq.exact(x).abs().max())
            if not worst <= tol * scale:
                raise PinnConfigError(
                    f"equation {eq.name}'s exact solution misses its condition {term.name!r} on this domain "
                    f"(|residual| up to {worst:.3g}): its exact solution holds on its own domain and time "
                    "interval only; use those (or a custom equation without an exact solution)"
                )

    def _check_exact_pde(self, tol: float, n: int = 64) -> bool:
        """``exact`` must return one column per output and satisfy the PDE residual at a few of the PDE
        points (float64): a wrong exact solution would make every reported error wrong. Returns False,
        unchecked, where ``exact`` is not written in differentiable torch ops."""
        eq = self.equation
        pts = self.terms[0].x
        x = pts[torch.linspace(0, len(pts) - 1, min(n, len(pts))).long()].detach().to("cpu", torch.float64)
        try:
            values = eq.exact(x.clone().requires_grad_(True))
        except RuntimeError:  # e.g. .numpy() on a tensor that requires grad: not differentiable, so no PDE check
            values = eq.exact(x).detach()
        want = (len(x), len(eq.outputs))
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != want:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise PinnConfigError(f"equation {eq.name}: exact() returned {got} for {len(x)} points; it must return "
                                  f"a tensor of shape (N, {want[1]}), one column per output ({', '.join(eq.outputs)})")
        if not values.requires_grad:
            return False
        worst = max(exact_pde_misfit(eq, x))
        if not worst <= tol:
            raise PinnConfigError(
                f"equation {eq.name}: exact() does not satisfy the PDE residual (|residual| up to {worst:.3g} of its "
                f"terms' scale at {len(x)} interior points): fix exact() or residual(), or train against it "
                "anyway with +equation.check_exact=false"
            )
        return True

    def _draw_rad(self, term: Term, rng: np.random.Generator) -> PointSet:
        """The PDE points: ``n_interior`` of a pool ``rad.pool`` times larger, kept by residual (RAD)."""
        pool = self.domain.interior(self.sampler.n_interior * self.rad.pool, self.sampler.name, rng)
        n = min(self.sampler.n_interior, len(pool.x))  # a grid sampler may give slightly fewer than asked
        x = torch.as_tensor(pool.x, device=self.device, dtype=self.dtype)
        keep = self.rad.choose(self.residual_norm(term, x), n, rng)
        log.debug("RAD: kept %d of %d candidate PDE points", n, len(x))
        return PointSet(pool.x[keep])

    def residual_norm(self, term: Term, x: torch.Tensor, chunk: int = 8192) -> np.ndarray:
        """|residual| of ``term`` at each row of ``x`` (all its output components together), in chunks."""
        out = []
        grad = torch.enable_grad() if term.engine == "autograd" else torch.no_grad()
        for xb in x.split(chunk):
            with grad:
                r = term.residual(self.engine.fields(xb, term.needs, None, term.engine))
                out.append(pointwise_sq(r, len(xb)).detach())
        return torch.cat(out).sqrt().to(torch.float64).cpu().numpy()

    def set_causal(self, chunks: int, eps: float) -> None:
        """Weight the PDE residual causally in time (see :class:`Causal`); ``chunks=0`` turns it off."""
        if not chunks:
            self.causal = None
            return
        eq = self.equation
        if self.rad is not None:
            raise PinnConfigError("trainer.causal_chunks and sampler.adaptive=rad do not combine; use one or the other")
        if eq.time is None:
            raise PinnConfigError(
                f"trainer.causal_chunks={chunks}: equation {eq.name} has no time input; causal weighting needs one"
            )
        col = eq.inputs.index(eq.time)
        t0, t1 = self.domain.bounds[col]
        self.causal = Causal(int(chunks), float(eps), col, float(t0), float(t1))
        if self.terms[0].x is not None:
            self.causal.assign(self.terms[0].x)

    def freeze_causal(self) -> None:
        """Hold the causal weights at their value for the current parameters (one forward pass), so a
        block of L-BFGS iterations (line searches included) minimises one fixed objective."""
        if self.causal is None:
            return
        self.causal.frozen = None
        with torch.no_grad():
            self._loss()
        self.causal.frozen = self.causal.last

    def plan(self) -> None:
        """Find which derivatives each term uses (one probe on a few points), pick its engine, and
        group the forward-engine terms into passes (see :meth:`_plan_passes`)."""
        eq = self.equation
        for term in self.terms:
            n = min(4, len(term.x))
            normals = None if term.normals is None else term.normals[:n]
            probe = RecordingFields(self.net, term.x[:n], eq.inputs, eq.outputs, normals)
            term.residual(probe)
            term.needs = probe.asked
            term.engine = self.engine.resolve(term.needs)
            term.channels = self._channels(term) if term.engine == "forward" and term.needs else None
        self._passes = self._plan_passes()
        self._planned_with = eq.coefficients()

    def _replan_if_stale(self) -> None:
        """Plan again when a coefficient changed since :meth:`plan` (a fused channel holds the old value)."""
        if self._planned_with is None:
            return
        now = self.equation.coefficients()
        same = len(now) == len(self._planned_with) and all(
            a is b or not (torch.is_tensor(a) or torch.is_tensor(b)) and a == b for a, b in zip(now, self._planned_with))
        if not same:
            log.debug("equation coefficients changed since planning: planning the derivative channels again")
            self.plan()

    def _probe_points(self, term: Term, n: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Points on which a fused operator must hold: ``n`` of the term's points spread over the whole
        set (a grid lists one coordinate slowest, a polygon's boundary one face at a time) and ``n``
        anywhere in the domain's box with random unit normals, so that a coefficient that varies
        over space, or a normal that varies from face to face, is never taken for a constant (points
        are redrawn later). Drawn from a private generator: planning does not move the run's RNG."""
        cpu64 = {"device": "cpu", "dtype": torch.float64}
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(term.x), generator=gen, device="cpu")[:n]
        lo, hi = (torch.as_tensor(b, **cpu64) for b in (self.domain.lo, self.domain.hi))
        anywhere = lo + torch.rand(n, len(lo), generator=gen, **cpu64) * (hi - lo)
        x = torch.cat([term.x.detach().cpu()[pick].to(torch.float64), anywhere])
        if term.normals is None:
            return x, None
        turn = torch.nn.functional.normalize(torch.randn(n, term.normals.shape[1], generator=gen, **cpu64))
        return x, torch.cat([term.normals.detach().cpu()[pick].to(torch.float64), turn])

    def _channels(self, term: Term) -> ForwardPlan:
        """The term's forward channels, with its constant-coefficient linear operator fused into one
        channel when the residual allows it (checked against the autograd engine in float64 on the CPU, where
        every device-independent start-up check runs: MPS has no float64)."""
        eq = self.equation
        x, normals = self._probe_points(term)
        plain = ForwardPlan.build(term.needs)
        fused = constant_linear_part(term.residual, x, eq.inputs, eq.outputs, term.needs, normals)
        if not fused:
            return plain
        channels = ForwardPlan.build(term.needs, fused)
        net = copy.deepcopy(self.net).to("cpu", torch.float64)
        x64 = x.detach().to("cpu", torch.float64)
        n64 = None if normals is None else normals.to("cpu", torch.float64)
        ref = term.residual(AutogradFields(net, x64, eq.inputs, eq.outputs, n64)).detach()
        got = term.residual(ForwardFields(net, x64, eq.inputs, eq.outputs, term.needs, n64, channels)).detach()
        if (got - ref).abs().max() > 1e-9 * max(1.0, ref.abs().max().item()):
            log.debug("term %s: fused operator channel disagrees with autograd; using plain channels", term.name)
            return plain
        return channels

    def _plan_passes(self) -> list[_Pass]:
        """One pass per forward-engine term with derivatives; value-only forward terms ride along
        with the largest of those (or share one pass of their own)."""
        passes = [_Pass(i, []) for i, t in enumerate(self.terms) if t.channels is not None]
        riders = [i for i, t in enumerate(self.terms) if t.engine == "forward" and t.channels is None]
        if riders and passes:
            max(passes, key=lambda p: len(self.terms[p.lead].x)).riders.extend(riders)
        elif riders:
            passes.append(_Pass(None, riders))
        return passes

    def configure(self, trainer_compile: object = "false", calls_expected: int = 0,
                  double_backward: bool = False) -> None:
        """``trainer.compile``: route :meth:`loss` through :class:`~pinn_cli.speed.CompiledLoss`
        (``calls_expected``: about how many times the run will call it). ``double_backward``: something
        differentiates the loss's gradient (Hessian analysis), which compiled code cannot: stay eager."""
        setting = compile_setting(trainer_compile)
        nested = any(t.engine == "autograd" and t.needs for t in self.terms)
        if (double_backward or nested or self.causal) and setting != "false":
            if setting != "auto":
                why = "Hessian analysis differentiates the loss twice" if double_backward else \
                    "nested autograd derivatives need double backward, which torch.compile lacks" if nested else \
                    "causal weighting (trainer.causal_chunks) updates its weights between calls"
                log.warning("trainer.compile=%s: %s; training continues in eager mode", setting, why)
            setting = "false"
        self._compiled = CompiledLoss(self._loss, trainable(self.net), setting, calls_expected, self.device)

    def expect_calls(self, n: int) -> None:
        """About how many more loss calls this run makes (a resumed run: the steps left)."""
        if self._compiled is not None:
            self._compiled.calls_expected = self._compiled.calls + n

    @property
    def compiled(self) -> bool:
        """Whether :meth:`loss` runs compiled code (after ``configure`` and its first calls)."""
        return self._compiled is not None and self._compiled.active is not None

    def term_losses(self) -> list[torch.Tensor]:
        """Unweighted mean-square residual of each term, in ``self.terms`` order."""
        self._replan_if_stale()
        return self._loss()[1]

    def loss(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Weighted total loss and the unweighted terms."""
        self._replan_if_stale()
        return self._compiled() if self._compiled is not None else self._loss()

    def _loss(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        eq, terms = self.equation, self.terms
        parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(terms)
        for p in self._passes:
            lead = None if p.lead is None else terms[p.lead]
            group = ([p.lead] if lead is not None else []) + p.riders
            x = torch.cat([terms[i].x for i in group]) if len(group) > 1 else terms[group[0]].x
            plan = lead.channels if lead is not None else ForwardPlan((), (), ())
            n = len(lead.x) if lead is not None else 0
            value, d1, combos = taylor_channels(self.net, x, plan.first, plan.combos, n_deriv=n)
            start = 0
            for i in group:
                t, m = terms[i], len(terms[i].x)
                if t is lead:
                    cache = plan.unpack(value, d1, combos, n)
                else:
                    cache = {(k, ()): value[start:start + m, k] for k in range(value.shape[1])}
                parts[i] = self._reduce(i, t.residual(ForwardFields.from_cache(t.x, eq.inputs, eq.outputs, cache, t.normals)))
                start += m
        for i, t in enumerate(terms):
            if parts[i] is None:
                parts[i] = self._reduce(i, t.residual(self.engine.fields(t.x, t.needs, t.normals, t.engine)))
        total = sum(t.weight * optimised for t, (optimised, _) in zip(terms, parts))
        return total, [reported for _, reported in parts]

    def _reduce(self, i: int, residual) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the optimiser minimises, the plain mean-square residual for the history) of term ``i``:
        the same tensor except for the causally weighted PDE term."""
        if self.causal is None or i != 0:  # terms[0] is the PDE residual
            m = mse(residual)
            return m, m
        c = self.causal
        n = len(self.terms[0].x)
        sq = pointwise_sq(residual, n)
        losses = c.chunk_losses(sq)
        w = c.frozen if c.frozen is not None else c.weights(losses)
        c.last = w
        return (w * losses).mean(), sq.mean()

    def state(self) -> dict:
        return {t.name: (t.x.cpu(), None if t.normals is None else t.normals.cpu()) for t in self.terms}

    def load_state(self, state: dict) -> None:
        for t in self.terms:
            x, n = state[t.name]
            t.x = x.to(self.device, self.dtype)
            t.normals = None if n is None else n.to(self.device, self.dtype)
        if self.causal is not None:
            self.causal.assign(self.terms[0].x)
