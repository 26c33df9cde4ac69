"""Math expressions from YAML: parsed with ``ast`` (never evaluated), built into sympy, compiled to torch/numpy.

The text is parsed as a Python expression, but only a whitelist of node types is turned into
sympy objects: numbers, names that the caller declares, + - * / ** (and ^ as a power), calls of a
fixed set of math functions, comparisons and and/or/not (for ``where``). Anything else (attribute
access, subscripts, strings, lambdas, keyword arguments, unknown names such as ``__import__``) is
rejected with a one-line ``PinnConfigError`` naming the expression and the offending symbol. The
sympy tree is then compiled into a closure tree over torch (or numpy) functions; no code is
generated and nothing goes through ``eval``/``exec``.
"""
from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Iterable

import numpy as np
import sympy
import torch
from scipy.special import erf as _np_erf

from ..errors import PinnConfigError

MAX_LENGTH = 4000

FUNCTIONS: dict[str, Callable] = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "asin": sympy.asin, "acos": sympy.acos,
    "atan": sympy.atan, "atan2": sympy.atan2, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
    "exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "abs": sympy.Abs, "sign": sympy.sign,
    "erf": sympy.erf, "min": sympy.Min, "max": sympy.Max,
}
CONSTANTS = {"pi": sympy.pi, "E": sympy.E}

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMP = {ast.Eq: sympy.Eq, ast.NotEq: sympy.Ne, ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt,
        ast.GtE: sympy.Ge}


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access '.{node.attr}'"
    if isinstance(node, ast.Subscript):
        return "subscript '[...]'"
    if isinstance(node, ast.Constant):
        return f"the literal {node.value!r}"
    if isinstance(node, ast.Lambda):
        return "lambda"
    return f"'{type(node).__name__}'"


class _Builder:
    def __init__(self, text: str, where: str, symbols: Iterable[str], boolean: bool) -> None:
        self.text, self.where, self.boolean = text, where, boolean
        self.symbols = set(symbols) if isinstance(symbols, (list, tuple)) else symbols

    def fail(self, what: str) -> PinnConfigError:
        return PinnConfigError(f"{self.where}: {self.text!r}: {what}")

    def unknown(self, name: str) -> PinnConfigError:
        known = sorted(self.symbols) + sorted(c for c in CONSTANTS if c not in self.symbols)
        return self.fail(f"unknown symbol {name!r}; allowed here: {', '.join(known)}")

    def build(self, node: ast.AST):
        if isinstance(node, ast.Expression):
            return self.build(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"{_describe(node)} is not allowed (numbers only)")
            if isinstance(v, int) and abs(v) < 10**12:
                return sympy.Integer(v)
            return sympy.Float(float(v))
        if isinstance(node, ast.Name):
            if node.id in self.symbols:
                return sympy.Symbol(node.id)
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            if node.id in FUNCTIONS:
                raise self.fail(f"{node.id!r} is a function; call it as {node.id}(...)")
            raise self.unknown(node.id)
        if isinstance(node, ast.BinOp):
            a, b = self.build(node.left), self.build(node.right)
            self._numeric(a, node.left), self._numeric(b, node.right)
            if isinstance(node.op, (ast.Pow, ast.BitXor)):
                return sympy.Pow(a, b, evaluate=False)   # no eager 9**9**9
            if type(node.op) in _BIN:
                return _BIN[type(node.op)](a, b)
            if isinstance(node.op, ast.BitAnd) and self.boolean:
                return sympy.And(a, b)
            if isinstance(node.op, ast.BitOr) and self.boolean:
                return sympy.Or(a, b)
            raise self.fail(f"operator {type(node.op).__name__!r} is not allowed")
        if isinstance(node, ast.UnaryOp):
            a = self.build(node.operand)
            if isinstance(node.op, ast.USub):
                return -self._numeric(a, node.operand)
            if isinstance(node.op, ast.UAdd):
                return self._numeric(a, node.operand)
            if isinstance(node.op, ast.Not) and self.boolean:
                return sympy.Not(a)
            raise self.fail(f"operator {type(node.op).__name__!r} is not allowed")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise self.fail(f"{_describe(node.func)} is not allowed")
            name = node.func.id
            if name not in FUNCTIONS:
                if name in CONSTANTS:
                    raise self.fail(f"{name!r} is not a function")
                raise self.fail(f"unknown function {name!r}; allowed: {', '.join(FUNCTIONS)}")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise self.fail(f"{name}(...) takes plain arguments only")
            args = [self._numeric(self.build(a), a) for a in node.args]
            try:
                return FUNCTIONS[name](*args)
            except (TypeError, ValueError) as err:
                raise self.fail(f"{name}(...): {err}") from None
        if isinstance(node, ast.Compare) and self.boolean:
            parts, left = [], self.build(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.build(right_node)
                if type(op) not in _CMP:
                    raise self.fail(f"comparison {type(op).__name__!r} is not allowed")
                parts.append(_CMP[type(op)](left, right, evaluate=False))
                left = right
            return parts[0] if len(parts) == 1 else sympy.And(*parts)
        if isinstance(node, ast.BoolOp) and self.boolean:
            args = [self.build(v) for v in node.values]
            return sympy.And(*args) if isinstance(node.op, ast.And) else sympy.Or(*args)
        if isinstance(node, (ast.Compare, ast.BoolOp)):
            raise self.fail("a comparison is only allowed in a condition's 'where'")
        raise self.fail(f"{_describe(node)} is not allowed")

    def _numeric(self, value, node):
        if not isinstance(value, sympy.Expr) or isinstance(value, sympy.core.relational.Relational):
            raise self.fail(f"a comparison cannot be used as a number (at {ast.unparse(node)!r})")
        return value


def parse(text, where: str, symbols: Iterable[str], boolean: bool = False) -> sympy.Basic:
    """Parse ``text`` into a sympy expression over ``symbols`` (plus pi, E and FUNCTIONS)."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise PinnConfigError(f"{where}={text!r} is invalid; it must be an expression (a string)")
    text = str(text).strip()
    if not text:
        raise PinnConfigError(f"{where} is empty; it must be an expression")
    if len(text) > MAX_LENGTH:
        raise PinnConfigError(f"{where}: expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise PinnConfigError(f"{where}: {text!r} cannot be parsed: {err.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise PinnConfigError(f"{where}: {text!r} cannot be parsed") from None
    try:
        return _Builder(text, where, symbols, boolean).build(tree)
    except RecursionError:
        raise PinnConfigError(f"{where}: {text!r} is nested too deeply") from None


# --------------------------------------------------------------------------- compilation

Lookup = Callable[[str], object]


class Backend:
    def __init__(self, name: str, funcs: dict, add, mul, pow_, eq, cmp, and_, or_, not_) -> None:
        self.name, self.funcs = name, funcs
        self.add, self.mul, self.pow, self.eq, self.cmp = add, mul, pow_, eq, cmp
        self.and_, self.or_, self.not_ = and_, or_, not_


def _eq_np(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)) <= 1e-9 * (1 + np.abs(b))


def _minmax(fn):
    return lambda *args: functools.reduce(fn, args)


def _torch_minmax(fn):
    def op(a, b):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return builtin_fn[fn](a, b)
        if not isinstance(a, torch.Tensor):
            a, b = b, a
        return fn(a, torch.as_tensor(b, dtype=a.dtype, device=a.device))
    builtin_fn = {torch.minimum: min, torch.maximum: max}
    return lambda *args: functools.reduce(op, args)


TORCH = Backend(
    "torch",
    {sympy.sin: torch.sin, sympy.cos: torch.cos, sympy.tan: torch.tan, sympy.asin: torch.asin,
     sympy.acos: torch.acos, sympy.atan: torch.atan, sympy.atan2: torch.atan2, sympy.sinh: torch.sinh,
     sympy.cosh: torch.cosh, sympy.tanh: torch.tanh, sympy.exp: torch.exp, sympy.log: torch.log,
     sympy.Abs: torch.abs, sympy.sign: torch.sign, sympy.erf: torch.erf,
     sympy.Min: _torch_minmax(torch.minimum), sympy.Max: _torch_minmax(torch.maximum)},
    operator.add, operator.mul, operator.pow, None, None, None, None, None,
)

NUMPY = Backend(
    "numpy",
    {sympy.sin: np.sin, sympy.cos: np.cos, sympy.tan: np.tan, sympy.asin: np.arcsin, sympy.acos: np.arccos,
     sympy.atan: np.arctan, sympy.atan2: np.arctan2, sympy.sinh: np.sinh, sympy.cosh: np.cosh,
     sympy.tanh: np.tanh, sympy.exp: np.exp, sympy.log: np.log, sympy.Abs: np.abs, sympy.sign: np.sign,
     sympy.erf: _np_erf, sympy.Min: _minmax(np.minimum), sympy.Max: _minmax(np.maximum)},
    operator.add, operator.mul, np.power, _eq_np,
    {sympy.Lt: np.less, sympy.Le: np.less_equal, sympy.Gt: np.greater, sympy.Ge: np.greater_equal,
     sympy.Ne: lambda a, b: ~_eq_np(a, b)},
    _minmax(np.logical_and), _minmax(np.logical_or), np.logical_not,
)


def _torch_fn(fn):
    """Apply a torch function; python floats (constants) pass through math-compatible tensors."""
    def call(*args):
        ref = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if ref is None:
            return float(fn(*(torch.tensor(float(a), dtype=torch.float64) for a in args)))
        return fn(*(a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
                    for a in args))
    return call


def compile_expr(expr: sympy.Basic, backend: Backend = TORCH, where: str = "expression") -> Callable[[Lookup], object]:
    """A function ``lookup -> value`` computing ``expr``; ``lookup(name)`` gives each free symbol's value."""
    if isinstance(expr, (sympy.Number, sympy.NumberSymbol)):
        const = float(expr)
        return lambda lookup: const
    fn = _compile(expr, backend, where)
    if isinstance(expr, sympy.Expr) and not expr.free_symbols:      # fold constants once, in floats
        try:
            with np.errstate(all="ignore"):
                value = complex(fn(None))
        except (TypeError, ValueError, OverflowError, ZeroDivisionError, RuntimeError):
            value = complex(math.nan)
        if value.imag != 0 or not math.isfinite(value.real):
            raise PinnConfigError(f"{where}: {expr} is not a finite real number")
        const = value.real
        return lambda lookup: const
    return fn


def _compile(expr: sympy.Basic, backend: Backend, where: str) -> Callable[[Lookup], object]:
    if isinstance(expr, sympy.Symbol):
        name = expr.name
        return lambda lookup: lookup(name)
    if expr is sympy.true or expr is sympy.false:
        const_b = bool(expr)
        return lambda lookup: const_b
    args = [compile_expr(a, backend, where) for a in expr.args]
    if isinstance(expr, sympy.Add):
        return lambda lookup: functools.reduce(backend.add, (a(lookup) for a in args))
    if isinstance(expr, sympy.Mul):
        return lambda lookup: functools.reduce(backend.mul, (a(lookup) for a in args))
    if isinstance(expr, sympy.Pow):
        base, exp_ = args
        e = expr.args[1]
        if e.is_number and float(e) == 0.5:
            sqrt = torch.sqrt if backend is TORCH else np.sqrt
            return lambda lookup: _sqrt(sqrt, base(lookup))
        if backend is TORCH:
            return lambda lookup: _torch_pow(base(lookup), exp_(lookup))
        return lambda lookup: np.power(np.asarray(base(lookup), float), exp_(lookup))
    if type(expr) in backend.funcs:  # Min and Max are not sympy.Function subclasses
        fn = backend.funcs[type(expr)]
        if backend is TORCH and type(expr) not in (sympy.Min, sympy.Max):
            fn = _torch_fn(fn)
        return lambda lookup: fn(*(a(lookup) for a in args))
    if isinstance(expr, sympy.Eq) and backend.eq is not None:
        a, b = args
        return lambda lookup: backend.eq(a(lookup), b(lookup))
    if backend.cmp and type(expr) in backend.cmp:
        fn, (a, b) = backend.cmp[type(expr)], args
        return lambda lookup: fn(a(lookup), b(lookup))
    if isinstance(expr, sympy.And) and backend.and_:
        return lambda lookup: backend.and_(*(a(lookup) for a in args))
    if isinstance(expr, sympy.Or) and backend.or_:
        return lambda lookup: backend.or_(*(a(lookup) for a in args))
    if isinstance(expr, sympy.Not) and backend.not_:
        (a,) = args
        return lambda lookup: backend.not_(a(lookup))
    raise PinnConfigError(f"{where}: {expr} cannot be computed with {backend.name}")


def _sqrt(fn, v):
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return fn(v)
    return math.sqrt(v)


def _torch_pow(a, b):
    if isinstance(b, float) and b.is_integer() and abs(b) <= 16:
        b = int(b)
    return a**b
