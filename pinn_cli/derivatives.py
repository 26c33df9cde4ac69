"""Named access to network outputs and their input derivatives (``f.u``, ``f.u_xx``, ``f["v_xy"]``).

Two engines sit behind one interface:
- ``autograd``: nested reverse mode, computed lazily and cached per point set, so ``u_x`` is
  computed once even when ``u_xx`` and ``u_xt`` both need it. A derivative that does not
  depend on the input (a linear network's ``u_xx``) is returned as zeros, never None or an error.
- ``forward``: forward (Taylor-mode) propagation of exactly the requested derivatives through
  the network, one matmul per layer for all channels (see ``taylor.py``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import torch
from torch import nn

from .errors import PinnConfigError

Key = tuple[int, tuple[int, ...]]  # (output index, sorted input indices)

ENGINES = ("auto", "autograd", "forward")


@lru_cache(maxsize=None)
def parse_name(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Key | int | None:
    """Map ``u`` / ``u_xt`` to (output, inputs); an input name to its column index; else None."""
    if name in inputs:
        return inputs.index(name)
    if name in outputs:
        return (outputs.index(name), ())
    out, sep, suffix = name.partition("_")
    if not sep or out not in outputs or not suffix:
        return None
    idx: list[int] = []
    names = sorted(inputs, key=len, reverse=True)
    while suffix:
        for inp in names:
            if suffix.startswith(inp):
                idx.append(inputs.index(inp))
                suffix = suffix[len(inp):]
                break
        else:
            return None
    return (outputs.index(out), tuple(sorted(idx)))


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
        key = parse_name(name, self._inputs, self._outputs)
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
        x = x.detach().requires_grad_(True)
        super().__init__(x, inputs, outputs, normals)
        with torch.enable_grad():
            values = net(x)
        for k in range(values.shape[1]):
            self._cache[(k, ())] = values[:, k]

    def get(self, key: Key) -> torch.Tensor:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out, idx = key
        parent = self.get((out, idx[:-1]))
        if parent.requires_grad:
            with torch.enable_grad():
                (grads,) = torch.autograd.grad(
                    parent.sum(), self._x, create_graph=True, allow_unused=True, materialize_grads=True
                )
        else:
            grads = torch.zeros_like(self._x)
        for m in range(self._x.shape[1]):
            self._cache.setdefault((out, tuple(sorted(idx[:-1] + (m,)))), grads[:, m])
        return self._cache[key]


class ForwardFields(Fields):
    """Derivatives computed up front by forward Taylor propagation; only the declared ones exist."""

    def __init__(self, net: nn.Module, x: torch.Tensor, inputs: Sequence[str], outputs: Sequence[str],
                 needs: Iterable[Key], normals: torch.Tensor | None = None) -> None:
        from .taylor import mlp_taylor

        super().__init__(x, inputs, outputs, normals)
        needs = list(needs)
        first = sorted({idx[0] for _, idx in needs if len(idx) == 1})
        pairs = sorted({idx for _, idx in needs if len(idx) == 2})
        value, d1, d2 = mlp_taylor(net, x, first, pairs)
        for k in range(value.shape[1]):
            self._cache[(k, ())] = value[:, k]
            for i, t in d1.items():
                self._cache[(k, (i,))] = t[:, k]
            for ij, t in d2.items():
                self._cache[(k, ij)] = t[:, k]

    def get(self, key: Key) -> torch.Tensor:
        try:
            return self._cache[key]
        except KeyError:
            raise KeyError(f"derivative {key} was not declared to the forward engine") from None


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
    """True when the forward engine can serve ``needs`` on ``net`` (an MLP, orders <= 2)."""
    from .networks import MLP

    return isinstance(net, MLP) and all(len(idx) <= 2 for _, idx in needs)


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
            raise PinnConfigError(
                "derivatives=forward supports network=mlp and derivatives up to order 2; "
                "use derivatives=auto or derivatives=autograd"
            )
        return "autograd"

    def fields(self, x: torch.Tensor, needs: Iterable[Key], normals: torch.Tensor | None = None,
               engine: str | None = None) -> Fields:
        """Fields at points ``x`` with at least the derivatives in ``needs`` available."""
        engine = engine or self.resolve(needs)
        if engine == "forward":
            return ForwardFields(self.net, x, self.inputs, self.outputs, needs, normals)
        return AutogradFields(self.net, x, self.inputs, self.outputs, normals)
