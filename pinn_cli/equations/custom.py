"""``equation=custom``: an equation written in YAML, its expressions parsed by sympy into torch.

A user file ``<dir>/equation/my_heat.yaml`` with ``defaults: [custom]`` sets the keys below and is
run with ``pinn train -cd <dir> equation=my_heat`` (or ``hydra.searchpath=[file://<dir>]``).
``equation=custom`` alone runs the worked example (``EXAMPLE``, the README's 1D heat equation).

Keys: ``inputs`` (names), ``outputs`` (default ``[u]``), ``bounds`` (per input, a box that
``domain=`` may replace), ``time`` (the time input; default ``t`` when it is an input, ``null`` for
none), ``params`` (name: number, usable in every expression; ``equation.params.alpha=0.2``),
``residual`` (one expression, or a list for a system), ``conditions`` (a list, below), ``exact``
(one expression, a list or a mapping per output; optional), ``weights`` (per loss term).

A condition is ``{where, value, expr, output, name}``: ``where`` is ``boundary``, ``initial``, or a
predicate such as ``"t == 0"`` (the initial set), ``"x == 1"`` (the boundary points where it
holds), ``"x == 0 and t > 0.5"``; or ``at: {x: [..], t: [..]}`` gives fixed points. The residual is
``expr - value``; ``expr`` defaults to the output named by ``output`` (default: the first).
Derivatives are named by suffix (``u_x``, ``u_xt``, ``v_yy``); ``u_n`` is the derivative along the
outward normal (boundary conditions only), so Neumann is ``expr: u_n`` and Robin ``expr: u_n + u``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy
import torch

from ..derivatives import input_splits, parse_name
from ..errors import PinnConfigError
from .base import Condition, Equation, exact_pde_misfit
from .expr import CONSTANTS, FUNCTIONS, NUMPY, TORCH, compile_expr, parse

EXAMPLE: dict[str, Any] = {
    "inputs": ["x", "t"],
    "outputs": ["u"],
    "bounds": {"x": [0, 1], "t": [0, 1]},
    "params": {"alpha": 0.1},
    "residual": "u_t - alpha*u_xx",
    "conditions": [
        {"where": "t == 0", "value": "sin(pi*x)"},
        {"where": "x == 0", "value": "0"},
        {"where": "x == 1", "expr": "u_x + u", "value": "-pi*exp(-alpha*pi**2*t)"},
    ],
    "exact": "exp(-alpha*pi**2*t)*sin(pi*x)",
}

CONDITION_KEYS = ("where", "at", "value", "expr", "output", "name")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_PARAM = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _names(value, key: str, pattern=_NAME) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise PinnConfigError(f"{key}={value!r} is invalid; it must be a non-empty list of names")
    out = []
    for v in value:
        if not isinstance(v, str) or not pattern.match(v):
            raise PinnConfigError(
                f"{key}: {v!r} is not a valid name (letters and digits, starting with a letter; no '_')"
            )
        if v in FUNCTIONS or v in CONSTANTS:
            raise PinnConfigError(f"{key}: {v!r} is the name of a built-in function or constant")
        out.append(v)
    if len(set(out)) != len(out):
        raise PinnConfigError(f"{key}={list(out)} repeats a name")
    return tuple(out)


class Custom(Equation):
    """An equation given in YAML: residual, conditions and exact solution as sympy expressions."""

    selection_name = "'where'"

    def __init__(self, name: str = "custom", inputs=None, outputs=None, bounds=None, params=None,
                 residual=None, conditions=None, exact=None, time="auto", weights=None,
                 check_exact: bool = True, **extra) -> None:
        if extra:
            accepted = "inputs, outputs, bounds, time, params, residual, conditions, exact, weights, check_exact"
            raise PinnConfigError(f"equation.{next(iter(extra))} is not a key of a custom equation; keys: {accepted}")
        if inputs is None and residual is None:
            spec = EXAMPLE
            inputs, outputs, bounds = spec["inputs"], spec["outputs"], spec["bounds"]
            params = {**spec["params"], **(params or {})}  # +equation.params.alpha=0.2 applies to the example
            residual, conditions, exact = spec["residual"], spec["conditions"], spec["exact"]
        for key, val in (("inputs", inputs), ("residual", residual), ("bounds", bounds)):
            if val is None:
                raise PinnConfigError(f"equation.{key} is missing; a custom equation needs inputs, bounds and residual")
        self.inputs = _names(inputs, "equation.inputs")
        self.outputs = _names(outputs if outputs is not None else ["u"], "equation.outputs")
        clash = set(self.inputs) & set(self.outputs)
        if clash:
            raise PinnConfigError(f"equation.outputs: {sorted(clash)[0]!r} is also an input")
        if "n" in self.inputs:
            raise PinnConfigError("equation.inputs: 'n' is reserved (u_n is the normal derivative); rename that input")
        for inp in self.inputs:  # derivative names must read one way: u_xy with inputs x, y and xy cannot
            split = input_splits(inp, [i for i in self.inputs if i != inp], limit=1)
            if split:
                raise PinnConfigError(
                    f"equation.inputs: {inp!r} is also {' then '.join(split[0])}, so a derivative name such as "
                    f"{self.outputs[0]}_{inp} would be ambiguous; rename it"
                )
        if time == "auto":
            time = "t" if "t" in self.inputs else None
        if time is not None and time not in self.inputs:
            raise PinnConfigError(f"equation.time={time!r} is not one of equation.inputs ({', '.join(self.inputs)})")
        self.time = time
        params = dict(params or {})
        for key, val in params.items():
            if not isinstance(key, str) or not _PARAM.match(key) or key in FUNCTIONS or key in CONSTANTS:
                raise PinnConfigError(f"equation.params: {key!r} is not a valid parameter name")
            if key in self.inputs or key in self.outputs or parse_name(key, self.inputs, self.outputs) is not None:
                raise PinnConfigError(f"equation.params: {key!r} is also an input, output or derivative name")
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                raise PinnConfigError(f"equation.params.{key}={val!r} is invalid; it must be a number")
        self.values = {k: float(v) for k, v in params.items()}
        if not isinstance(bounds, Mapping):
            raise PinnConfigError(f"equation.bounds={bounds!r} is invalid; it must map each input to [low, high]")
        self._t0 = None
        if time is not None and _is_seq(bounds.get(time)) and len(bounds[time]) == 2:
            self._t0 = float(bounds[time][0])
        self._used: set[str] = set()

        self._residuals = self._system(residual)
        self._conditions = self._parse_conditions(conditions)
        self._exact = self._parse_exact(exact)
        self.has_exact = self._exact is not None
        self.params = {}                      # the base class sets no attributes; values live in self.values
        super().__init__(name, {k: v for k, v in bounds.items() if k in self.inputs}, weights)
        self.params = dict(self.values)
        self.check_exact = bool(check_exact)
        if check_exact and self.has_exact:
            self._check_exact()

    def coefficients(self) -> tuple:
        return tuple(self.values.values())

    def unused_params(self) -> tuple[str, ...]:
        """The params that no expression (residual, condition, exact) names: their values change nothing."""
        return tuple(k for k in self.values if k not in self._used)

    # ------------------------------------------------------------------ parsing
    def _parse(self, text, key: str, names, boolean: bool = False) -> sympy.Basic:
        """``parse``, noting the names the expression uses (for :meth:`unused_params`)."""
        tree = parse(text, key, names, boolean=boolean)
        self._used |= {s.name for s in tree.free_symbols}
        return tree

    def _field_symbols(self, expr: sympy.Basic, text, key: str, normals: bool) -> None:
        """Every free symbol of a residual-like expression must be an input, output, derivative or param."""
        for sym in expr.free_symbols:
            n = sym.name
            if n in self.values or parse_name(n, self.inputs, self.outputs) is not None:
                continue
            out, _, suffix = n.partition("_")
            if suffix == "n" and out in self.outputs:
                if normals:
                    continue
                raise PinnConfigError(
                    f"{key}: {text!r}: {n!r} (a normal derivative) needs boundary points; use it in a boundary condition"
                )
            raise PinnConfigError(
                f"{key}: {text!r}: unknown symbol {n!r}; use inputs ({', '.join(self.inputs)}), outputs "
                f"({', '.join(self.outputs)}), derivatives such as {self.outputs[0]}_{self.inputs[0]}"
                f"{self.inputs[0]}, or params ({', '.join(self.values) or 'none'})"
            )

    def _field_expr(self, text, key: str, normals: bool = False):
        """Parse an expression of the fields; the allowed names are checked after parsing (derivatives are open-ended)."""
        tree = self._parse(text, key, _FieldNames(self))
        self._field_symbols(tree, text, key, normals)
        return compile_expr(tree, TORCH, f"{key}: {str(text)!r}")

    def _coord_expr(self, text, key: str, boolean: bool = False, backend=TORCH):
        tree = self._parse(text, key, [*self.inputs, *self.values], boolean=boolean)
        return tree, compile_expr(tree, backend, f"{key}: {str(text)!r}")

    def _system(self, residual):
        items = residual if isinstance(residual, (list, tuple)) or _is_seq(residual) else [residual]
        if not items:
            raise PinnConfigError("equation.residual is empty; give one expression per equation")
        keys = ["equation.residual" if len(items) == 1 else f"equation.residual[{i}]" for i in range(len(items))]
        trees = [self._parse(r, k, _FieldNames(self)) for r, k in zip(items, keys)]
        used = set()
        for tree, r, k in zip(trees, items, keys):
            self._field_symbols(tree, r, k, normals=False)
            used |= {key[0] for key in (parse_name(s.name, self.inputs, self.outputs) for s in tree.free_symbols)
                     if isinstance(key, tuple)}
        missing = [o for i, o in enumerate(self.outputs) if i not in used]
        if missing:
            raise PinnConfigError(
                f"equation.residual: output {missing[0]!r} appears in no residual, so nothing determines it inside "
                f"the domain; give a residual for each output"
            )
        return [compile_expr(tree, TORCH, f"{k}: {str(r)!r}") for tree, r, k in zip(trees, items, keys)]

    def _parse_conditions(self, conditions) -> list[Condition]:
        conditions = list(conditions or [])
        out: list[Condition] = []
        counts: dict[str, int] = {}
        kinds = []
        for i, c in enumerate(conditions):
            key = f"equation.conditions[{i}]"
            if not isinstance(c, Mapping):
                raise PinnConfigError(f"{key}={c!r} is invalid; it must be a mapping with where/value/expr")
            unknown = [k for k in c if k not in CONDITION_KEYS]
            if unknown:
                raise PinnConfigError(f"{key}.{unknown[0]} is not known; keys: {', '.join(CONDITION_KEYS)}")
            on, select, at = self._location(c, key)
            kinds.append(on)
            counts[on] = counts.get(on, 0) + 1
            output = c.get("output", self.outputs[0])
            if output not in self.outputs:
                raise PinnConfigError(f"{key}.output={output!r} is not an output ({', '.join(self.outputs)})")
            lhs = self._field_expr(c["expr"], f"{key}.expr", normals=on == "boundary") if "expr" in c else None
            _, rhs = self._coord_expr(c.get("value", 0), f"{key}.value")
            out.append(Condition("", on, self._condition_residual(lhs, output, rhs), at=at, select=select))
        # names: explicit, else ic/bc/pt numbered when a kind repeats
        short = {"initial": "ic", "boundary": "bc", "points": "pt"}
        seen: dict[str, int] = {}
        named = []
        for i, (c, cond) in enumerate(zip(conditions, out)):
            kind = short[kinds[i]]
            seen[kind] = seen.get(kind, 0) + 1
            name = c.get("name") or (kind if counts[kinds[i]] == 1 else f"{kind}{seen[kind]}")
            if not isinstance(name, str) or not _PARAM.match(name) or name == "pde":
                raise PinnConfigError(f"equation.conditions[{i}].name={name!r} is invalid")
            named.append(Condition(name, cond.on, cond.residual, cond.at, cond.select))
        names = [c.name for c in named]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise PinnConfigError(f"equation.conditions: two conditions are named {dup!r}; give them distinct names")
        return named

    def _location(self, c: Mapping, key: str):
        """(on, select, at) of a condition from its ``where`` or ``at``."""
        if "at" in c:
            if "where" in c:
                raise PinnConfigError(f"{key}: give either 'where' or 'at', not both")
            at = c["at"]
            if not isinstance(at, Mapping) or set(at) != set(self.inputs):
                raise PinnConfigError(f"{key}.at must give a list of coordinates for each input ({', '.join(self.inputs)})")
            cols = [[float(v) for v in (at[n] if _is_seq(at[n]) else [at[n]])] for n in self.inputs]
            if len({len(col) for col in cols}) != 1:
                raise PinnConfigError(f"{key}.at: every input needs the same number of coordinates")
            return "points", None, {n: col for n, col in zip(self.inputs, cols)}
        where = c.get("where")
        if where is None:
            raise PinnConfigError(f"{key}.where is missing: boundary, initial, or a predicate such as 'x == 0'")
        if isinstance(where, str) and where.strip() in ("boundary", "initial"):
            on = where.strip()
            if on == "initial" and self.time is None:
                raise PinnConfigError(f"{key}.where=initial needs a time input (equation.time)")
            return on, None, None
        tree = self._parse(where, f"{key}.where", [*self.inputs, *self.values, "boundary", "initial"], boolean=True)
        conjuncts = list(tree.args) if isinstance(tree, sympy.And) else [tree]
        on = "boundary"
        rest = []
        for cj in conjuncts:
            if cj in (sympy.Symbol("boundary"), sympy.Symbol("initial")):
                on = cj.name                                  # "boundary and x > 0"
                continue
            if self._time_equality(cj, f"{key}.where", where) is not None:
                on = "initial"
                continue
            if cj.free_symbols & {sympy.Symbol("boundary"), sympy.Symbol("initial")}:
                raise PinnConfigError(
                    f"{key}.where={where!r}: 'boundary' and 'initial' may only be joined to a predicate with 'and'"
                )
            rest.append(cj)
        if on == "initial" and self.time is None:
            raise PinnConfigError(f"{key}.where={where!r}: no time input")
        if not rest:
            return on, None, None
        pred = compile_expr(sympy.And(*rest) if len(rest) > 1 else rest[0], NUMPY, f"{key}.where")
        index = {n: i for i, n in enumerate(self.inputs)}
        values = self.values

        def select(x: np.ndarray) -> np.ndarray:
            res = pred(lambda n: x[:, index[n]] if n in index else values[n])
            return np.broadcast_to(np.asarray(res, bool), (len(x),))
        return on, select, None

    def _time_equality(self, cj, key: str, text) -> float | None:
        """``t == c`` (or ``c == t``) with c a number: c, which must be the initial time."""
        if self.time is None or not isinstance(cj, sympy.Eq):
            return None
        a, b = cj.args
        t = sympy.Symbol(self.time)
        if b == t:
            a, b = b, a
        if a != t or b.free_symbols:
            return None
        c = float(b)
        if self._t0 is not None and abs(c - self._t0) > 1e-9 * max(1.0, abs(self._t0)):
            raise PinnConfigError(
                f"{key}={str(text)!r}: a condition in time must be at the initial time "
                f"{self.time} == {self._t0:g} (or use a predicate on the boundary)"
            )
        return c

    def _condition_residual(self, lhs, output: str, rhs):
        values = self.values

        def residual(f):
            look = lambda n: values[n] if n in values else f[n]
            left = f[output] if lhs is None else lhs(look)
            return left - rhs(look)
        return residual

    def _parse_exact(self, exact):
        if exact is None:
            return None
        if isinstance(exact, Mapping):
            missing = [o for o in self.outputs if o not in exact]
            if missing or set(exact) - set(self.outputs):
                raise PinnConfigError(f"equation.exact must give one expression per output ({', '.join(self.outputs)})")
            items = [exact[o] for o in self.outputs]
        elif _is_seq(exact):
            items = list(exact)
        else:
            items = [exact]
        if len(items) != len(self.outputs):
            raise PinnConfigError(
                f"equation.exact has {len(items)} expressions for {len(self.outputs)} outputs ({', '.join(self.outputs)})"
            )
        key = lambda i: "equation.exact" if len(items) == 1 else f"equation.exact[{i}]"
        return [self._coord_expr(e, key(i))[1] for i, e in enumerate(items)]

    # ------------------------------------------------------------------ Equation API
    def residual(self, f):
        values = self.values
        look = lambda n: values[n] if n in values else f[n]
        res = [r(look) for r in self._residuals]
        res = [r if isinstance(r, torch.Tensor) else torch.full_like(f[self.inputs[0]], float(r)) for r in res]
        return res[0] if len(res) == 1 else tuple(res)

    def conditions(self):
        return list(self._conditions)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        if self._exact is None:
            return torch.full((len(x), len(self.outputs)), math.nan, dtype=x.dtype, device=x.device)
        cols = {n: x[:, i] for i, n in enumerate(self.inputs)}
        values = self.values
        look = lambda n: cols[n] if n in cols else values[n]
        outs = []
        for e in self._exact:
            v = e(look)
            outs.append(v if isinstance(v, torch.Tensor) else torch.full((len(x),), float(v), dtype=x.dtype, device=x.device))
        return torch.stack(outs, 1)

    def _check_exact(self, n: int = 64) -> None:
        """The exact solution must satisfy the residual (catches a typo, or an inherited ``exact``)."""
        gen = torch.Generator().manual_seed(0)
        lo = torch.tensor([self.bounds[k][0] for k in self.inputs], dtype=torch.float64, device="cpu")
        hi = torch.tensor([self.bounds[k][1] for k in self.inputs], dtype=torch.float64, device="cpu")
        x = lo + torch.rand(n, len(self.inputs), generator=gen, device="cpu", dtype=torch.float64) * (hi - lo)
        misfit = exact_pde_misfit(self, x)
        for i, worst in enumerate(misfit):
            if worst > 1e-6:
                key = "equation.residual" if len(misfit) == 1 else f"equation.residual[{i}]"
                raise PinnConfigError(
                    f"equation.exact does not satisfy {key}: |residual| up to {worst:.3g} of its terms' scale at "
                    "random points; fix exact, remove it, or set equation.check_exact=false"
                )


class _FieldNames:
    """The names a field expression may use: any identifier (checked after parsing) except functions."""

    def __init__(self, eq: Custom) -> None:
        self.eq = eq

    def __contains__(self, name: str) -> bool:
        return name not in FUNCTIONS and not name.startswith("_") and name not in CONSTANTS

    def __iter__(self):
        eq = self.eq
        return iter([*eq.inputs, *eq.outputs, *eq.values,
                     f"{eq.outputs[0]}_{eq.inputs[0]}", f"{eq.outputs[0]}_{eq.inputs[0]}{eq.inputs[0]}"])


def _is_seq(v) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) or type(v).__name__ == "ListConfig"
