"""Named access to network outputs and their input derivatives (``f.u``, ``f.u_xx``, ``f["v_xy"]``).

Two engines sit behind one interface:
- ``autograd``: nested reverse mode, computed lazily and cached per point set, so ``u_x`` is
  computed once even when ``u_xx`` and ``u_xt`` both need it. A derivative that does not
  depend on the input (a linear network's ``u_xx``) is returned as zeros, never None or an error.
- ``forward``: forward (Taylor-mode) propagation of exactly the requested derivatives through
  the network, one matmul per layer for all channels (see ``taylor.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from .errors import PinnConfigError
from .taylor import Combo, taylor_channels

Key = tuple[int, tuple[int, ...]]  # (output index, sorted input indices)

ENGINES = ("auto", "autograd", "forward")


@cache
def parse_name(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Key | int | None:
    """Map ``u`` / ``u_xt`` to (output, inputs); an input name to its column index; else None."""
    if name in inputs:
        return inputs.index(name)
    if name in outputs:
        return (outputs.index(name), ())
    out, sep, suffix = name.partition("_")
    if not sep or out not in outputs or not suffix:
        return None
    splits = input_splits(suffix, inputs)
    if len(splits) != 1:  # none, or ambiguous (inputs x, y and xy: is u_xy d/dxy or d2/dxdy?)
        return None
    return (outputs.index(out), tuple(sorted(inputs.index(n) for n in splits[0])))


def input_splits(suffix: str, inputs: Sequence[str], limit: int = 2) -> list[tuple[str, ...]]:
    """Ways (at most ``limit``) to read ``suffix`` as a sequence of input names."""
    if not suffix:
        return [()]
    out: list[tuple[str, ...]] = []
    for inp in inputs:
        if suffix.startswith(inp):
            out += [(inp, *rest) for rest in input_splits(suffix[len(inp):], inputs, limit)]
            if len(out) >= limit:
                return out[:limit]
    return out


class Fields:
    """Outputs, derivatives and coordinates at one set of points, looked up by name."""

    def __init__(self, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                 normals: torch.Tensor | None = None) -> None:
        self._x = x
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._normals = normals
        self._cache: dict[Key, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        parse = parse_name.__wrapped__ if torch.compiler.is_compiling() else parse_name  # dynamo warns on caches
        key = parse(name, self._inputs, self._outputs)
        if isinstance(key, int):
            return self._x[:, key]
        if key is None:
            if name.partition("_")[0] in self._outputs and name.endswith("_n") and self._normals is not None:
                return self.normal_derivative(self._outputs.index(name.partition("_")[0]))
            raise KeyError(
                f"{name!r} is not an input ({', '.join(self._inputs)}), an output "
                f"({', '.join(self._outputs)}) or a derivative such as {self._outputs[0]}_{self._inputs[0]}"
            )
        return self.get(key)

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(str(err)) from None

    def normal_derivative(self, out: int) -> torch.Tensor:
        """Derivative of output ``out`` along the outward normal of boundary points."""
        assert self._normals is not None
        return sum(self.get((out, (i,))) * self._normals[:, i] for i in range(len(self._inputs)))

    def get(self, key: Key) -> torch.Tensor:
        raise NotImplementedError


class AutogradFields(Fields):
    """Lazily computed, cached nested reverse-mode derivatives; zeros where there is no dependence."""

    def __init__(self, net: nn.Module, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                 normals: torch.Tensor | None = None) -> None:
        if not x.requires_grad:  # a caller's x that requires grad stays in the graph (d/dx of a residual)
            x = x.detach().requires_grad_(True)
        super().__init__(x, inputs, outputs, normals)
        with torch.enable_grad():  # slices too: under no_grad a slice would drop out of the graph
            values = net(x)
            for k in range(values.shape[1]):
                self._cache[(k, ())] = values[:, k]

    def get(self, key: Key) -> torch.Tensor:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out, idx = key
        parent = self.get((out, idx[:-1]))
        with torch.enable_grad():
            if parent.requires_grad:
                (grads,) = torch.autograd.grad(
                    parent.sum(), self._x, create_graph=True, allow_unused=True, materialize_grads=True
                )
            else:
                grads = torch.zeros_like(self._x)
            for m in range(self._x.shape[1]):
                self._cache.setdefault((out, tuple(sorted(idx[:-1] + (m,)))), grads[:, m])
        return self._cache[key]


@dataclass(frozen=True)
class ForwardPlan:
    """The channels one forward (Taylor) pass carries and where each named derivative is read from.

    ``source`` maps a derivative key to ``("first", i)`` (d/dx_i), ``("combo", c)`` (channel c) or
    ``("zero", 0)``. A fused linear operator (``u_t - a u_xx`` as one channel) is read through its
    anchor key (``u_t``, with coefficients divided by the anchor's) while the other keys read zero,
    so a residual that is affine in them with those coefficients gets its exact value.
    """

    first: tuple[int, ...]
    combos: tuple[Combo, ...]
    source: tuple[tuple[Key, str, int], ...]

    @classmethod
    def build(cls, needs: Iterable[Key], fused: Mapping[int, Mapping[tuple[int, ...], float]] | None = None
              ) -> ForwardPlan:
        """Plain channels for ``needs``; per output in ``fused``, one channel for its linear operator."""
        fused = fused or {}
        first: list[int] = []
        combos: list[Combo] = []
        source: list[tuple[Key, str, int]] = []

        def combo(c: Combo) -> int:
            if c not in combos:
                combos.append(c)
            return combos.index(c)

        for out, coefs in sorted(fused.items()):
            anchor = max(coefs, key=lambda idx: (abs(coefs[idx]), idx))
            c = combo(tuple((coefs[idx] / coefs[anchor], idx) for idx in sorted(coefs)))
            source += [((out, idx), "combo" if idx == anchor else "zero", c if idx == anchor else 0)
                       for idx in sorted(coefs)]
        for out, idx in sorted(needs):
            if not idx or idx in fused.get(out, {}):
                continue
            if len(idx) == 1:
                if idx[0] not in first:
                    first.append(idx[0])
                source.append(((out, idx), "first", idx[0]))
            else:
                source.append(((out, idx), "combo", combo(((1.0, idx),))))
        return cls(tuple(first), tuple(combos), tuple(source))

    def unpack(self, value: torch.Tensor, d1: Mapping[int, torch.Tensor], combos: Sequence[torch.Tensor],
               n: int) -> dict[Key, torch.Tensor]:
        """Named columns from one pass's outputs: the value (first ``n`` rows) and the derivatives."""
        cache: dict[Key, torch.Tensor] = {(k, ()): value[:n, k] for k in range(value.shape[1])}
        for (out, idx), kind, i in self.source:
            if kind == "first":
                cache[(out, idx)] = d1[i][:, out]
            elif kind == "combo":
                cache[(out, idx)] = combos[i][:, out]
            else:
                cache[(out, idx)] = value.new_zeros(()).expand(n)
        return cache


class ForwardFields(Fields):
    """Derivatives computed up front by forward Taylor propagation; only the declared ones exist."""

    def __init__(self, net: nn.Module, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                 needs: Iterable[Key], normals: torch.Tensor | None = None, plan: ForwardPlan | None = None
                 ) -> None:
        super().__init__(x, inputs, outputs, normals)
        plan = plan or ForwardPlan.build(needs)
        self._cache = plan.unpack(*taylor_channels(net, x, plan.first, plan.combos), len(x))

    @classmethod
    def from_cache(cls, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                   cache: dict[Key, torch.Tensor], normals: torch.Tensor | None = None) -> ForwardFields:
        """Fields over already computed columns (one slice of a shared forward pass)."""
        f = cls.__new__(cls)
        Fields.__init__(f, x, inputs, outputs, normals)
        f._cache = cache
        return f

    def get(self, key: Key) -> torch.Tensor:
        try:
            return self._cache[key]
        except KeyError:
            raise KeyError(f"derivative {key} was not declared to the forward engine") from None


class ProbeFields(Fields):
    """Fields whose outputs and derivatives are free tensors (to read a residual's coefficients)."""

    def __init__(self, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                 values: dict[Key, torch.Tensor], normals: torch.Tensor | None = None) -> None:
        super().__init__(x, inputs, outputs, normals)
        self._cache = values

    def get(self, key: Key) -> torch.Tensor:
        return self._cache[key]


def constant_linear_part(residual: Callable, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                         needs: Iterable[Key], normals: torch.Tensor | None = None,
                         ) -> dict[int, dict[tuple[int, ...], float]]:
    """Per output, the derivatives the residual is affine in with constant coefficients.

    The residual is evaluated twice on free random field values at points ``x`` (float64); a
    derivative qualifies when its pointwise coefficient is the same at every point and in both
    evaluations. Only outputs with two or more such derivatives are returned (fusing them saves a
    channel). A residual that is not one pointwise tensor gives ``{}``; callers verify the result.
    """
    needs = sorted(k for k in needs if k[1])
    keys = [(k, ()) for k in range(len(outputs))] + needs
    gen = torch.Generator().manual_seed(0)
    x = x.detach().to(torch.float64)
    normals = None if normals is None else normals.detach().to(torch.float64)
    coefs = []
    for _ in range(2):
        values = {k: torch.randn(len(x), generator=gen, device="cpu", dtype=torch.float64).to(x.device).requires_grad_(True)
                  for k in keys}
        with torch.enable_grad():
            r = residual(ProbeFields(x, inputs, outputs, values, normals))
            if not isinstance(r, torch.Tensor) or r.shape != (len(x),) or not r.requires_grad:
                return {}
            grads = torch.autograd.grad(r.sum(), [values[k] for k in needs], allow_unused=True)
        coefs.append(grads)
    found: dict[int, dict[tuple[int, ...], float]] = {}
    for (out, idx), g0, g1 in zip(needs, *coefs):
        if g0 is None or g1 is None:
            continue
        c = g0[0].item()
        if c != 0 and torch.allclose(g0, g1, rtol=1e-12, atol=0) and torch.allclose(g0, torch.full_like(g0, c),
                                                                                   rtol=1e-12, atol=0):
            found.setdefault(out, {})[idx] = c
    return {out: c for out, c in found.items() if len(c) > 1}


class RecordingFields(AutogradFields):
    """Autograd fields that remember which derivatives were asked for (to plan the forward engine)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[Key] = set()

    def get(self, key: Key) -> torch.Tensor:
        if key[1]:
            self.asked.add(key)
        return super().get(key)


def supports_forward(net: nn.Module, needs: Iterable[Key]) -> bool:
    """True when the forward engine can serve ``needs`` on ``net`` (an MLP or modified MLP, orders <= 2)."""
    from .networks import MLP, ModifiedMLP

    return isinstance(net, (MLP, ModifiedMLP)) and all(len(idx) <= 2 for _, idx in needs)


class DerivativeEngine:
    """Builds ``Fields`` for a network with the engine chosen by name (auto, autograd, forward)."""

    def __init__(self, name: str, net: nn.Module, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        if name not in ENGINES:
            raise PinnConfigError(f"derivatives={name!r} is not known; choose from: {', '.join(ENGINES)}")
        self.name = name
        self.net = net
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)

    def resolve(self, needs: Iterable[Key]) -> str:
        """The concrete engine used for a point set with these derivative needs."""
        needs = list(needs)
        if self.name == "autograd":
            return "autograd"
        if supports_forward(self.net, needs):
            return "forward"
        if self.name == "forward":
            high = [(o, idx) for o, idx in needs if len(idx) > 2]
            if high:
                o, idx = high[0]
                why = f"{self.outputs[o]}_{''.join(self.inputs[i] for i in idx)} is of order {len(idx)}"
            else:
                why = f"it cannot propagate through a {type(self.net).__name__} network"
            raise PinnConfigError(
                f"derivatives=forward: {why}; it supports the mlp family and modified_mlp, derivatives up to "
                "order 2; use derivatives=auto or derivatives=autograd"
            )
        return "autograd"

    def fields(self, x: torch.Tensor, needs: Iterable[Key], normals: torch.Tensor | None = None,
               engine: str | None = None) -> Fields:
        """Fields at points ``x`` with at least the derivatives in ``needs`` available."""
        engine = engine or self.resolve(needs)
        if engine == "forward":
            return ForwardFields(self.net, x, self.inputs, self.outputs, needs, normals)
        return AutogradFields(self.net, x, self.inputs, self.outputs, normals)
