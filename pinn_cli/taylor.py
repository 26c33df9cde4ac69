"""Forward-mode (Taylor) propagation of input derivatives up to order 2 through an MLP.

Channels carried layer by layer: the value, first-order directions ``dirs``, and second-order
*combos*, each a constant-coefficient linear combination of derivatives (a plain ``u_xx``, or a
whole operator such as ``u_t - 0.05 u_xx``, carried as one channel: one matmul per layer fewer).
Only the requested channels are carried, plus the directions that pair products need.

Two implementations agree to rounding:
- ``traced``: plain tensor ops, differentiated by autograd. Used under ``torch.compile`` and
  ``torch.func`` transforms, when ``x`` needs a gradient, and on networks of one layer.
- ``fused``: a ``torch.autograd.Function`` with a hand-written backward: few elementwise passes
  written in place (tanh gets its own formulas), blocks of points of bounded size, no autograd
  graph of hundreds of nodes (the eager default). A backward with
  ``create_graph=True`` (Hessian-vector products) recomputes through ``traced``, so it stays exact.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from .networks import MLP, Tanh, scalar

Combo = tuple[tuple[float, tuple[int, ...]], ...]  # ((coef, (i,) or (i, j)), ...)
Outputs = tuple[Tensor, dict[int, Tensor], list[Tensor]]

IMPLS = ("auto", "fused", "traced")
BLOCK_BYTES = 8 << 20  # bytes of one channel-stacked activation per block of points (bounds temporaries)
# On a GPU blocks buy no cache locality and each one costs every kernel launch of a step again (on the
# H100 the eager step at 65,536 + 8,192 points, 8 blocks, took 16 ms against 5.9 ms at 8,192 + 1,024, 2 blocks)
GPU_BLOCK_BYTES = 1 << 30


class Plan(NamedTuple):
    """Channel layout: value, then first-order ``dirs`` (input indices), then one channel per combo."""

    in_dim: int
    dirs: tuple[int, ...]
    first_out: tuple[tuple[int, int], ...]  # (input index, position in dirs)
    lin: tuple[tuple[tuple[float, int], ...], ...]  # per combo: (coef, input index) first-order terms
    quad: tuple[tuple[tuple[float, int, int], ...], ...]  # per combo: (coef, pos a, pos b) pair terms


def _make_plan(in_dim: int, first: tuple[int, ...], combos: tuple[Combo, ...]) -> Plan:
    """Resolve requested first derivatives and combos into channel positions."""
    for i in (*first, *(k for c in combos for _, idx in c for k in idx)):
        if not 0 <= i < in_dim:
            raise ValueError(f"input direction {i} is out of range for in_dim={in_dim}")
    for c in combos:
        if any(len(idx) not in (1, 2) for _, idx in c):
            raise ValueError(f"combo {c}: derivatives of order 1 or 2 only")
    paired = {k for c in combos for _, idx in c if len(idx) == 2 for k in idx}
    dirs = tuple(sorted(paired | set(first)))
    pos = {d: n for n, d in enumerate(dirs)}
    return Plan(
        in_dim=in_dim,
        dirs=dirs,
        first_out=tuple((i, pos[i]) for i in dict.fromkeys(first)),
        lin=tuple(tuple((float(a), idx[0]) for a, idx in c if len(idx) == 1) for c in combos),
        quad=tuple(
            tuple((float(a), pos[min(idx)], pos[max(idx)]) for a, idx in c if len(idx) == 2) for c in combos
        ),
    )


# cached in eager mode; dynamo traces the plain function (torch 2.4 cannot trace an lru_cache's __wrapped__)
make_plan = lru_cache(maxsize=256)(_make_plan)


def mlp_taylor(
    net: MLP, x: Tensor, first: Sequence[int], pairs: Sequence[tuple[int, int]], *, impl: str = "auto"
) -> tuple[Tensor, dict[int, Tensor], dict[tuple[int, int], Tensor]]:
    """x: (N, in_dim). Returns value (N, out_dim), {i: d out / d x_i}, {(i, j): d2 out / d x_i d x_j}
    (each (N, out_dim)) for exactly the requested keys."""
    norm = list(dict.fromkeys((min(p), max(p)) for p in pairs))
    value, d1, d2 = taylor_channels(net, x, first, [((1.0, p),) for p in norm], impl=impl)
    return value, d1, {p: d2[norm.index((min(p), max(p)))] for p in pairs}


def taylor_channels(
    net: MLP, x: Tensor, first: Sequence[int], combos: Sequence[Combo], *,
    n_deriv: int | None = None, impl: str = "auto",
) -> Outputs:
    """Value at all rows of ``x`` (M, in_dim); first derivatives ``first`` and ``combos`` at its first
    ``n_deriv`` rows (default all): returns value (M, out), {i: (N, out)}, [(N, out) per combo]."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; choose from {IMPLS}")
    first = tuple(int(i) for i in first)
    combos = tuple(tuple((float(a), tuple(int(k) for k in idx)) for a, idx in c) for c in combos)
    key = (net.in_dim, first, combos)
    plan = _make_plan(*key) if torch.compiler.is_compiling() else make_plan(*key)
    n = x.shape[0] if n_deriv is None else n_deriv
    if not isinstance(net, MLP):  # a network with products (the modified MLP): traced jets
        from .jets import channels

        value, chans = channels(net, plan, x, n, _seeds(plan, x))
        nd = len(plan.dirs)
        return value, {i: chans[c] for i, c in plan.first_out}, list(chans[nd:])
    if impl == "auto":
        impl = "fused" if fused_ok(net, x) else "traced"
    if impl == "fused":
        params = [t for layer in net.layers for t in (layer.weight, layer.bias)]
        out = _FusedTaylor.apply(net, plan, x, n, *params)
        nch = len(plan.dirs) + len(plan.quad)
        value, chans = out[: x.shape[0]], out[x.shape[0]:].view(nch, n, out.shape[1]).unbind(0)
    else:
        value, chans = _traced(net, plan, x, n)
    nd = len(plan.dirs)
    return value, {i: chans[c] for i, c in plan.first_out}, list(chans[nd:])


def fused_ok(net: MLP, x: Tensor) -> bool:
    """Whether the fused Function can serve this call (eager, no input gradient, no torch.func)."""
    return (
        len(net.layers) > 1
        and not x.requires_grad
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


def _seeds(plan: Plan, like: Tensor) -> Tensor:
    """Each derivative channel's direction in input space, (n_dirs + n_combos, in_dim); cached per
    plan, dtype and device in eager mode (no host-to-device copy per step)."""
    key = (plan, like.dtype, like.device)
    if not torch.compiler.is_compiling() and key in _SEEDS:
        return _SEEDS[key]
    rows = [[0.0] * plan.in_dim for _ in range(len(plan.dirs) + len(plan.lin))]
    for c, i in enumerate(plan.dirs):
        rows[c][i] = 1.0
    for k, lin in enumerate(plan.lin):
        for a, i in lin:
            rows[len(plan.dirs) + k][i] += a
    if torch.compiler.is_compiling():
        return torch.tensor(rows, dtype=like.dtype, device=like.device).reshape(len(rows), plan.in_dim)
    with torch.inference_mode(False):  # a cached inference tensor would break every later backward
        seeds = torch.tensor(rows, dtype=like.dtype, device=like.device).reshape(len(rows), plan.in_dim)
    _SEEDS[key] = seeds
    return seeds


_SEEDS: dict[tuple, Tensor] = {}


def _layer0_channels(net: MLP, seeds: Tensor) -> Tensor:
    """First-layer pre-activation of every derivative channel, (channels, width); constant in x."""
    return seeds @ (net.layers[0].weight * net.in_scale).t()


def _pair_product(quad: tuple[tuple[float, int, int], ...], zd: Sequence[Tensor]) -> Tensor:
    """Sum of coef * z_a * z_b over a combo's pair terms."""
    out = None
    for coef, a, b in quad:
        t = torch.square(zd[a]) if a == b else zd[a] * zd[b]
        out = t * coef if out is None else out + coef * t
    return out


def _traced(net: MLP, plan: Plan, x: Tensor, n: int) -> tuple[Tensor, list[Tensor]]:
    """Per-channel propagation with ordinary differentiable ops: value (M, out), [dirs..., combos...].
    Rows past ``n`` (value only) go through as a stream of their own: no activation derivatives
    for them, and no slicing of whole-batch tensors (whose gradients would be zero-padded copies)."""
    layers = net.layers
    xs = x * net.in_scale + net.in_shift
    split = 0 < n < x.shape[0]
    z = torch.nn.functional.linear(xs[:n] if split else xs, layers[0].weight, layers[0].bias)
    zv = torch.nn.functional.linear(xs[n:], layers[0].weight, layers[0].bias) if split else None
    nd = len(plan.dirs)
    ch = list(_layer0_channels(net, _seeds(plan, x)))
    if len(layers) == 1:
        return (z if zv is None else torch.cat([z, zv])), [g.expand(n, -1) for g in ch]
    h_in = hv_in = ch_in = None  # the residual stream entering a block
    for layer, act, skip in zip(layers[1:], net.acts, net.skips):
        if ch:
            h, s1, s2 = act.derivs(z)
            a1, a2 = s1[:n], s2[:n]
            zd = ch[:nd]
            ch = [a1 * g for g in zd] + [
                a1 * g if not q else torch.addcmul(a1 * g, a2, _pair_product(q, zd))
                for g, q in zip(ch[nd:], plan.quad)
            ]
        else:
            h = act(z)
        hv = None if zv is None else act(zv)
        if skip:
            h, ch = h + h_in, [a + b for a, b in zip(ch, ch_in)]
            hv = None if hv is None else hv + hv_in
        h_in, hv_in, ch_in = h, hv, ch
        wt = layer.weight.t()
        z = torch.addmm(layer.bias, h, wt)
        zv = None if hv is None else torch.addmm(layer.bias, hv, wt)
        ch = [g.mm(wt) for g in ch]
    return (z if zv is None else torch.cat([z, zv])), ch


def _blocks(m: int, n: int, channels: int, width: int, itemsize: int,
            block_bytes: int | None = None) -> list[tuple[int, int, bool]]:
    """Row blocks (start, stop, has derivative channels) of at most ~``block_bytes`` per activation
    (BLOCK_BYTES, sized for a CPU's cache)."""
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    rows = max(1, block_bytes // (channels * width * itemsize))
    out = [(a, min(a + rows, n), True) for a in range(0, n, rows)]
    vrows = max(1, block_bytes // (width * itemsize))
    return out + [(a, min(a + vrows, m), False) for a in range(n, m, vrows)]


class _Block(NamedTuple):
    """What one block of points keeps per hidden layer for the backward pass."""

    z: Tensor  # value pre-activation (B, W)
    zc: Tensor | None  # channel pre-activations (C, B or 1, W)
    s: Tensor
    s1: Tensor
    s2: Tensor | None  # None for tanh (derived from s, s1 where needed)
    pairs: list[tuple[Tensor, float] | None]  # per combo: (t, f) with f * t = sum of coef * z_a * z_b
    hc: Tensor | None  # channel activations (C, B, W)
    h: Tensor  # what the next layer reads: ``s``, plus the block's input in a residual block
    hcs: Tensor | None  # the same for the channels: ``hc`` (+ the input channels)


def _scaled_pairs(quad: tuple[tuple[float, int, int], ...], zd: Tensor) -> tuple[Tensor, float]:
    """(t, f) with f * t = sum of coef * z_a * z_b: one pass per term, the first coefficient kept aside."""
    (f, a, b), rest = quad[0], quad[1:]
    t = torch.square(zd[a]) if a == b else zd[a] * zd[b]
    for coef, a, b in rest:
        t.addcmul_(zd[a], zd[b], value=coef / f)
    return t, f


def _act_forward(act, plan: Plan, z: Tensor, zc: Tensor | None) -> _Block:
    """One activation on the value and every channel of a block (few passes, written in place)."""
    tanh = isinstance(act, Tanh)
    if tanh:
        s = torch.tanh(z)
        s1, s2 = torch.addcmul(scalar(1.0, s), s, s, value=-1), None
    else:
        s, s1, s2 = act.derivs(z)
    if zc is None:
        return _Block(z, None, s, s1, s2, [], None, s, None)
    nd = len(plan.dirs)
    hc = torch.empty((zc.shape[0], *s.shape), dtype=s.dtype, device=s.device)
    for c in range(nd):
        torch.mul(zc[c], s1, out=hc[c])
    pairs: list[tuple[Tensor, float] | None] = []
    for k, q in enumerate(plan.quad):
        zk, out = zc[nd + k], hc[nd + k]
        if not q:
            pairs.append(None)
            torch.mul(zk, s1, out=out)
            continue
        t, f = _scaled_pairs(q, zc[:nd])
        pairs.append((t, f))
        if tanh:  # s1 z + s2 f t with s2 = -2 s s1: s1 (z - 2 f s t)
            torch.mul(torch.addcmul(zk, s, t, value=-2 * f), s1, out=out)
        else:
            torch.addcmul(s1 * zk, s2, t, value=f, out=out)
    return _Block(z, zc, s, s1, s2, pairs, hc, s, hc)


def _act_backward(act, plan: Plan, blk: _Block, g: Tensor, gc: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Gradients at the pre-activations of a block from those at its activations (``gc`` is overwritten)."""
    s, s1, s2, zc = blk.s, blk.s1, blk.s2, blk.zc
    if gc is None:
        return s1 * g, None
    tanh = s2 is None
    nd = len(plan.dirs)
    acc = torch.mul(gc[0], zc[0])  # sum over channels of z_c * g_c
    for c in range(1, zc.shape[0]):
        acc.addcmul_(gc[c], zc[c])
    quads = [(gc[nd + k], p) for k, p in enumerate(blk.pairs) if p is not None]
    u, uf = None, 1.0  # uf * u = sum over combos of g_k * (f t)_k
    if quads:
        (g0, (t0, uf)), rest = quads[0], quads[1:]
        u = torch.mul(g0, t0)
        for gk, (t, f) in rest:
            u.addcmul_(gk, t, value=f / uf)
    if tanh:  # s1 g + s2 acc + s3 uf u, with s2 = -2 s s1 and s3 = s1 (4 - 6 s1)
        gz = torch.addcmul(g, s, acc, value=-2)
        if u is not None:
            gz.add_(u, alpha=4 * uf).addcmul_(s1, u, value=-6 * uf)
        gz.mul_(s1)
    else:
        gz = torch.mul(s1, g).addcmul_(s2, acc)
        if u is not None:
            gz.addcmul_(act.third(blk.z, s, s1, s2), u, value=uf)
    # channel grads: s1 g_c, plus s2 g_k d(coef z_a z_b)/dz_a on the directions of each pair term
    combos = [k for k, q in enumerate(plan.quad) if q]
    w = {} if tanh else {k: torch.mul(s2, gc[nd + k]) for k in combos}
    for c in range(zc.shape[0]):
        gc[c].mul_(s1)
    scale = -2.0 if tanh else 1.0  # tanh: s2 g_k = -2 s (s1 g_k), from the scaled grads
    for k in combos:
        wk = torch.mul(s, gc[nd + k]) if tanh else w[k]
        for coef, a, b in plan.quad[k]:
            if a == b:
                gc[a].addcmul_(wk, zc[a], value=2 * coef * scale)
            else:
                gc[a].addcmul_(wk, zc[b], value=coef * scale)
                gc[b].addcmul_(wk, zc[a], value=coef * scale)
    return gz, gc


class _FusedTaylor(torch.autograd.Function):
    """Taylor propagation through an MLP with an analytic backward (see module docstring).

    Output: one (M + C * N, out_dim) tensor: the value at all M rows, then each of the C derivative
    channels (dirs, then combos) at the first N rows.
    """

    @staticmethod
    def forward(ctx, net: MLP, plan: Plan, x: Tensor, n: int, *params: Tensor) -> Tensor:
        weights, biases = params[0::2], params[1::2]
        m, out_dim = x.shape[0], weights[-1].shape[0]
        seeds = _seeds(plan, x)
        nch = seeds.shape[0]
        xs = torch.addcmul(net.in_shift, x, net.in_scale)
        ch0 = _layer0_channels(net, seeds)[:, None, :]
        out = x.new_empty(m + nch * n, out_dim)
        out_ch = out[m:].view(nch, n, out_dim)
        saved = []
        block_bytes = BLOCK_BYTES if x.device.type == "cpu" else GPU_BLOCK_BYTES
        for a, b, deriv in _blocks(m, n, 1 + nch, weights[0].shape[0], x.element_size(), block_bytes):
            z = torch.addmm(biases[0], xs[a:b], weights[0].t())
            zc = ch0 if deriv and nch else None
            layers: list[_Block] = []
            for w, bias, act, skip in zip(weights[1:], biases[1:], net.acts, net.skips):
                blk = _act_forward(act, plan, z, zc)
                if skip:
                    prev = layers[-1]
                    blk = blk._replace(h=blk.s + prev.h, hcs=None if blk.hc is None else blk.hc + prev.hcs)
                layers.append(blk)
                wt = w.t()
                z = torch.addmm(bias, blk.h, wt)
                zc = None if blk.hcs is None else torch.matmul(blk.hcs, wt)
            out[a:b] = z
            if zc is not None:
                out_ch[:, a:b] = zc
            saved.append((a, b, layers))
        ctx.net, ctx.plan, ctx.n, ctx.blocks = net, plan, n, saved
        ctx.save_for_backward(x, seeds, *params)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, seeds, *params = ctx.saved_tensors
        net, plan, n = ctx.net, ctx.plan, ctx.n
        if torch.is_grad_enabled():  # create_graph=True: recompute through differentiable ops
            with torch.enable_grad():
                value, chans = _traced(net, plan, x, n)
                full = torch.cat([value, *chans])
            live = [i for i, need in enumerate(ctx.needs_input_grad[4:]) if need]
            got = torch.autograd.grad(full, [params[i] for i in live], grad, create_graph=True,
                                      allow_unused=True, materialize_grads=True)
            grads: list[Tensor | None] = [None] * len(params)  # a frozen layer (Fourier embedding) gets none
            for i, g in zip(live, got):
                grads[i] = g
            return (None, None, None, None, *grads)
        grad = grad.contiguous()
        weights = params[0::2]
        gw = [torch.zeros_like(w) for w in weights]
        gb = [torch.zeros_like(b) for b in params[1::2]]
        m, nch = x.shape[0], seeds.shape[0]
        xs = torch.addcmul(net.in_shift, x, net.in_scale)
        grad_ch = grad[m:].view(nch, n, grad.shape[1])
        dch0 = x.new_zeros(nch, weights[0].shape[0])  # d loss / d layer-0 channel pre-activations
        for a, b, layers in ctx.blocks:
            g = grad[a:b]
            gc = grad_ch[:, a:b] if layers[0].zc is not None else None
            carry = carry_c = None  # gradient reaching a residual block's input through its skip
            for k in range(len(weights) - 1, 0, -1):
                blk = layers[k - 1]
                gw[k].addmm_(g.t(), blk.h)
                gb[k] += g.sum(0)
                g = g.mm(weights[k])
                if gc is not None:
                    gc = gc.reshape(-1, gc.shape[-1])
                    gw[k].addmm_(gc.t(), blk.hcs.view(gc.shape[0], -1))
                    gc = gc.mm(weights[k]).view(blk.hc.shape)
                if carry is not None:
                    g += carry
                    if gc is not None:
                        gc += carry_c
                carry, carry_c = (g, None if gc is None else gc.clone()) if net.skips[k - 1] else (None, None)
                g, gc = _act_backward(net.acts[k - 1], plan, blk, g, gc)
            gw[0].addmm_(g.t(), xs[a:b])
            gb[0] += g.sum(0)
            if gc is not None:
                dch0 += gc.sum(1)
        if nch:
            gw[0] += (dch0.t() @ seeds) * net.in_scale
        return (None, None, None, None, *(t for pair in zip(gw, gb) for t in pair))
