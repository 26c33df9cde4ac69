"""Taylor jets: a value with its first-order directions and second-order combos, carried through
linear maps, pointwise activations, sums and products with ordinary (differentiable) tensor ops.

The forward engine's channel layout (:class:`~pinn_cli.taylor.Plan`) for networks that are not a
plain chain of layers, such as the modified MLP, whose gates multiply two propagated quantities.
For a combo L = sum a_i d_i + sum c_ij d_i d_j the product rule is
L(uv) = L(u) v + u L(v) + sum c_ij (u_i v_j + u_j v_i), so every combo stays one channel.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .networks import Activation, ModifiedMLP


class Jet(NamedTuple):
    """``value`` (N, W); ``dirs`` and ``combos``: one (N, W) or constant (1, W) tensor each."""

    value: Tensor
    dirs: tuple[Tensor, ...]
    combos: tuple[Tensor, ...]


def seed(xs: Tensor, scale: Tensor, seeds: Tensor, n_dirs: int) -> Jet:
    """The jet of the scaled input ``xs = x * scale + shift``: ``seeds`` (channels, in_dim) holds each
    direction's unit vector and each combo's first-order part (the input's second derivatives are 0)."""
    rows = (seeds * scale).unsqueeze(1)  # (channels, 1, in_dim): constant over points
    return Jet(xs, tuple(rows[:n_dirs].unbind(0)), tuple(rows[n_dirs:].unbind(0)))


def linear(j: Jet, layer: torch.nn.Linear) -> Jet:
    """W u + b: the bias enters the value only."""
    wt = layer.weight.t()
    parts = [j.value, *j.dirs, *j.combos]
    out = torch.cat(parts).mm(wt).split([len(t) for t in parts])
    nd = len(j.dirs)
    return Jet(out[0] + layer.bias, tuple(out[1:1 + nd]), tuple(out[1 + nd:]))


def activation(j: Jet, act: Activation, quad: Sequence[Sequence[tuple[float, int, int]]]) -> Jet:
    """act(u): directions s1 u_d; combos s1 L(u) + s2 sum coef u_i u_j."""
    s, s1, s2 = act.derivs(j.value)
    combos = []
    for g, q in zip(j.combos, quad):
        out = s1 * g
        if q:
            out = out + s2 * sum(coef * j.dirs[i] * j.dirs[k] for coef, i, k in q)
        combos.append(out)
    return Jet(s, tuple(s1 * g for g in j.dirs), tuple(combos))


def sub(a: Jet, b: Jet) -> Jet:
    return Jet(a.value - b.value, tuple(x - y for x, y in zip(a.dirs, b.dirs)),
               tuple(x - y for x, y in zip(a.combos, b.combos)))


def add(a: Jet, b: Jet) -> Jet:
    return Jet(a.value + b.value, tuple(x + y for x, y in zip(a.dirs, b.dirs)),
               tuple(x + y for x, y in zip(a.combos, b.combos)))


def mul(a: Jet, b: Jet, quad: Sequence[Sequence[tuple[float, int, int]]]) -> Jet:
    """Product rule: directions a_d b + a b_d; combos L(a) b + a L(b) + sum c_ij (a_i b_j + a_j b_i)."""
    combos = []
    for ga, gb, q in zip(a.combos, b.combos, quad):
        out = ga * b.value + a.value * gb
        for coef, i, k in q:
            cross = 2 * a.dirs[i] * b.dirs[i] if i == k else a.dirs[i] * b.dirs[k] + a.dirs[k] * b.dirs[i]
            out = out + coef * cross
        combos.append(out)
    dirs = tuple(da * b.value + a.value * db for da, db in zip(a.dirs, b.dirs))
    return Jet(a.value * b.value, dirs, tuple(combos))


def modified_mlp(net: ModifiedMLP, x: Tensor, seeds: Tensor, n_dirs: int,
                 quad: Sequence[Sequence[tuple[float, int, int]]]) -> Jet:
    """The modified MLP's forward pass on jets: U, V encoders, then h <- V + z (U - V) per layer."""
    j = seed(x * net.in_scale + net.in_shift, net.in_scale, seeds, n_dirs)
    u, v = (activation(linear(j, enc), net.act, quad) for enc in (net.encode_u, net.encode_v))
    gap = sub(u, v)
    h = j
    for layer in net.layers:
        h = add(v, mul(activation(linear(h, layer), net.act, quad), gap, quad))
    return linear(h, net.out)


def channels(net: torch.nn.Module, plan, x: Tensor, n: int, seeds: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Value at all rows of ``x`` and the plan's channels (dirs, then combos) at its first ``n``."""
    if not isinstance(net, ModifiedMLP):
        raise TypeError(f"no Taylor jets for {type(net).__name__}")
    nd = len(plan.dirs)
    out = modified_mlp(net, x[:n], seeds, nd, plan.quad)
    value = out.value if n == x.shape[0] else torch.cat([out.value, net(x[n:])])
    chans = [g.expand(n, -1) for g in (*out.dirs, *out.combos)]
    return value, chans
