"""Forward-mode (Taylor) propagation of input derivatives up to order 2 through an MLP.

Only the requested channels are carried, plus the first-order directions that requested pairs need.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .networks import MLP

Index = slice | tuple[int, ...]


class _Plan(NamedTuple):
    """Channel layout of one request: value, first-order ``dirs``, then pairs (as positions in ``dirs``)."""

    dirs: tuple[int, ...]
    dir_index: Index
    pair_pos: tuple[tuple[int, int], ...]
    left: Index
    right: Index
    square: bool
    first_out: tuple[tuple[int, int], ...]
    pair_out: tuple[tuple[tuple[int, int], int], ...]


def _as_index(idx: tuple[int, ...]) -> Index:
    """A slice when ``idx`` is a contiguous ascending run (a view, no gather), else ``idx``."""
    if idx and all(b - a == 1 for a, b in zip(idx, idx[1:])):
        return slice(idx[0], idx[-1] + 1)
    return idx


def _take(t: Tensor, idx: Index) -> Tensor:
    """Rows ``idx`` of ``t`` (dim 0), as a view when ``idx`` is a slice."""
    return t[idx] if isinstance(idx, slice) else t[list(idx)]


def _make_plan(in_dim: int, first: tuple[int, ...], pairs: tuple[tuple[int, int], ...]) -> _Plan:
    """Resolve the requested derivatives into channel positions."""
    for i in (*first, *(k for p in pairs for k in p)):
        if not 0 <= i < in_dim:
            raise ValueError(f"input direction {i} is out of range for in_dim={in_dim}")
    norm = tuple(dict.fromkeys((min(p), max(p)) for p in pairs))
    dirs = tuple(sorted({k for p in norm for k in p} | set(first)))
    pos = {d: n for n, d in enumerate(dirs)}
    pair_pos = tuple((pos[i], pos[j]) for i, j in norm)
    left, right = tuple(a for a, _ in pair_pos), tuple(b for _, b in pair_pos)
    return _Plan(
        dirs=dirs,
        dir_index=_as_index(dirs),
        pair_pos=pair_pos,
        left=_as_index(left),
        right=_as_index(right),
        square=left == right,
        first_out=tuple((i, pos[i]) for i in dict.fromkeys(first)),
        pair_out=tuple((p, norm.index((min(p), max(p)))) for p in dict.fromkeys(pairs)),
    )


_cached_plan = lru_cache(maxsize=256)(_make_plan)


def _product(a: Tensor, b: Tensor, same: bool) -> Tensor:
    """a * b, as a single-input square when both are the same channel."""
    return torch.square(a) if same else a * b


def mlp_taylor(
    net: MLP,
    x: Tensor,
    first: Sequence[int],
    pairs: Sequence[tuple[int, int]],
    *,
    stacked: bool = False,
) -> tuple[Tensor, dict[int, Tensor], dict[tuple[int, int], Tensor]]:
    """x: (N, in_dim). Returns value (N, out_dim), {i: d out / d x_i}, {(i, j): d2 out / d x_i d x_j}
    (each (N, out_dim)) for exactly the requested keys. ``stacked``: one batched matmul per layer.
    """
    key = (net.in_dim, tuple(int(i) for i in first), tuple((int(i), int(j)) for i, j in pairs))
    plan = _make_plan(*key) if torch.compiler.is_compiling() else _cached_plan(*key)
    layers, act = net.layers, net.act
    w0 = layers[0].weight
    rows = (w0 * net.in_scale).t()
    z = torch.nn.functional.linear(x * net.in_scale + net.in_shift, w0, layers[0].bias)
    if len(layers) == 1:
        return (
            z,
            {i: rows[i].expand_as(z) for i, _ in plan.first_out},
            {p: torch.zeros_like(z) for p, _ in plan.pair_out},
        )
    if stacked:
        return _stacked(net, plan, rows, z)

    h, s1, s2 = act.derivs(z)
    zd = [rows[i] for i in plan.dirs]
    hd = [s1 * r for r in zd]
    hp = [s2 * _product(zd[a], zd[b], a == b) for a, b in plan.pair_pos]
    for layer in layers[1:-1]:
        wt = layer.weight.t()
        z = torch.addmm(layer.bias, h, wt)
        zd = [g.mm(wt) for g in hd]
        zp = [g.mm(wt) for g in hp]
        h, s1, s2 = act.derivs(z)
        hd = [s1 * g for g in zd]
        hp = [
            torch.addcmul(s1 * g, s2, _product(zd[a], zd[b], a == b))
            for g, (a, b) in zip(zp, plan.pair_pos)
        ]
    last = layers[-1]
    wt = last.weight.t()
    return (
        torch.addmm(last.bias, h, wt),
        {i: hd[c].mm(wt) for i, c in plan.first_out},
        {p: hp[c].mm(wt) for p, c in plan.pair_out},
    )


def _stacked(net: MLP, plan: _Plan, rows: Tensor, z: Tensor) -> tuple[
    Tensor, dict[int, Tensor], dict[tuple[int, int], Tensor]
]:
    """Stacked-channel variant of :func:`mlp_taylor` from the first layer's pre-activation ``z``."""
    layers, act = net.layers, net.act
    sizes = (1, len(plan.dirs), len(plan.pair_pos))
    has_pairs = bool(plan.pair_pos)

    def pair_products(zd: Tensor) -> Tensor:
        a = _take(zd, plan.left)
        return torch.square(a) if plan.square else a * _take(zd, plan.right)

    s, s1, s2 = act.derivs(z)
    row = _take(rows, plan.dir_index)
    chans = [s[None], s1 * row[:, None, :]]
    if has_pairs:
        chans.append(s2 * pair_products(row)[:, None, :])
    h = torch.cat(chans)
    for layer in layers[1:-1]:
        z, zd, zp = h.matmul(layer.weight.t()).split(sizes)
        s, s1, s2 = act.derivs(z.squeeze(0) + layer.bias)
        chans = [s[None], s1 * zd]
        if has_pairs:
            chans.append(torch.addcmul(s1 * zp, s2, pair_products(zd)))
        h = torch.cat(chans)
    out = h.matmul(layers[-1].weight.t()).unbind(0)
    return (
        out[0] + layers[-1].bias,
        {i: out[1 + c] for i, c in plan.first_out},
        {p: out[1 + sizes[1] + c] for p, c in plan.pair_out},
    )
