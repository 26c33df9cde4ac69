"""L-BFGS: ``torch.optim.LBFGS``'s algorithm, with its inverse-Hessian product in a few matrix ops.

torch's two-loop recursion runs ~8 tensor ops per stored pair, two of them host syncs (``alpha=``
a tensor): 400 ops and 100 syncs per iteration at the default history of 50. The same recursion is
two triangular solves with R = triu(S Yᵀ), the matrix of s_i·y_j (Byrd, Nocedal & Schnabel 1994),
kept up to date with two matrix-vector products (over the stored pairs) per new pair: ~25 ops and no
sync. ``benchmarks/lbfgs.py`` times both. The line search is torch's own strong-Wolfe routine.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.lbfgs import _strong_wolfe


def lbfgs_direction(g: Tensor, S: Tensor, Y: Tensor, SY: Tensor, h_diag: Tensor | float,
                    order: Tensor | None = None) -> Tensor:
    """-H g for the L-BFGS inverse Hessian H of the pairs (s_i, y_i), the rows of S and Y, with initial
    scale ``h_diag``. ``order`` lists the rows of S and Y oldest first (default: as stored); ``SY`` is
    in that order: ``SY[i, j] = s_i·y_j`` for the i-th and j-th oldest pairs. Equal to the two-loop
    recursion up to rounding."""
    R = torch.triu(SY)
    a = (S @ g).neg_()
    alpha = torch.linalg.solve_triangular(R, (a if order is None else a[order])[:, None], upper=True)[:, 0]
    alpha_rows = alpha if order is None else torch.empty_like(alpha).index_copy_(0, order, alpha)
    r = torch.addmv(g, Y.t(), alpha_rows).neg_().mul_(h_diag)  # h_diag (-g - Yᵀ alpha)
    b = Y @ r
    rhs = torch.diagonal(SY) * alpha - (b if order is None else b[order])
    c = torch.linalg.solve_triangular(R.t(), rhs[:, None], upper=False)[:, 0]
    c_rows = c if order is None else torch.empty_like(c).index_copy_(0, order, c)
    return torch.addmv(r, S.t(), c_rows)


class _History:
    """The last ``size`` pairs: S, Y (size, P) a ring buffer of rows, SY (size, size) their products in
    age order (oldest first; a small matrix, shifted when the ring wraps). Lives in the optimizer
    state as plain tensors and ints, so snapshots and checkpoints copy it whole."""

    @staticmethod
    def empty(state: dict, size: int, like: Tensor) -> None:
        state.update(S=like.new_zeros(size, like.numel()), Y=like.new_zeros(size, like.numel()),
                     SY=like.new_zeros(size, size), count=0, head=0)

    @staticmethod
    def order(state: dict, device: torch.device) -> Tensor | None:
        """Ring rows oldest first, or None while they are in order (before the ring first wraps)."""
        size, head = state["S"].shape[0], state["head"]
        if state["count"] < size or head == 0:
            return None
        return torch.arange(head, head + size, device=device).remainder_(size)

    @staticmethod
    def pairs(state: dict) -> list[tuple[Tensor, Tensor]]:
        """The stored (s, y) pairs, oldest first, from either layout (torch's lists or the ring)."""
        if "old_stps" in state:
            return list(zip(state["old_stps"], state["old_dirs"]))
        order = _History.order(state, state["S"].device)
        rows = range(state["count"]) if order is None else order.tolist()
        return [(state["S"][i], state["Y"][i]) for i in rows]

    @staticmethod
    def rebuild(state: dict, size: int, like: Tensor) -> None:
        """Ring buffers of ``size`` pairs holding the newest stored pairs (a state saved by
        torch.optim.LBFGS, or one saved with another history size)."""
        pairs = _History.pairs(state)[-size:]
        for key in ("old_stps", "old_dirs", "ro", "al"):
            state.pop(key, None)
        _History.empty(state, size, like)
        for s, y in ((s.to(like), y.to(like)) for s, y in pairs):
            _History.push(state, s, y, y.dot(s))

    @staticmethod
    def push(state: dict, s: Tensor, y: Tensor, ys: Tensor) -> None:
        """Store a pair (dropping the oldest when full); ``ys`` = y·s as the caller accepted it."""
        S, Y, SY = state["S"], state["Y"], state["SY"]
        size, count, head = S.shape[0], state["count"], state["head"]
        if count == size:
            slot, state["head"] = head, (head + 1) % size
            SY[:-1, :-1] = SY[1:, 1:].clone()
        else:
            slot, state["count"] = count, count + 1
        n = state["count"]
        S[slot], Y[slot] = s, y
        order = _History.order(state, s.device)
        row, col = Y[:n] @ s, S[:n] @ y  # s_new·y_j and s_i·y_new, ring order
        SY[n - 1, :n] = row if order is None else row[order]
        SY[:n, n - 1] = col if order is None else col[order]
        SY[n - 1, n - 1] = ys  # the accepted value itself: the pivot stays > 1e-10, as torch's rho > 0

    @staticmethod
    def direction(state: dict, g: Tensor, h_diag: Tensor | float) -> Tensor:
        n = state["count"]
        if n == 0:
            return g.neg().mul_(h_diag)
        return lbfgs_direction(g, state["S"][:n], state["Y"][:n], state["SY"][:n, :n], h_diag,
                               _History.order(state, g.device))


class LBFGS(torch.optim.LBFGS):
    """``torch.optim.LBFGS`` with the same arguments and iterates (to rounding); the history lives in
    ring buffers (:class:`_History`) and the direction comes from :func:`lbfgs_direction`. A state
    saved by torch's LBFGS (earlier checkpoints) is taken over at the first step."""

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """One call: up to ``max_iter`` iterations (``closure`` re-evaluates the loss and its gradient)."""
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        if group["line_search_fn"] not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss
        if "old_stps" in state or ("S" in state and state["S"].shape[0] != history_size):
            _History.rebuild(state, history_size, flat_grad)

        d, t = state.get("d"), state.get("t")
        H_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                H_diag = 1
                _History.empty(state, history_size, flat_grad)
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    _History.push(state, s, y, ys)
                    H_diag = ys / y.dot(y)
                d = _History.direction(state, flat_grad, H_diag)

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            if group["line_search_fn"] == "strong_wolfe":
                x_init = self._clone_param()

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
                self._add_grad(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                ls_func_evals = 0
                opt_cond = False
                if n_iter != max_iter:
                    with torch.enable_grad():
                        loss = closure()
                    loss = float(loss)
                    flat_grad = self._gather_flat_grad()
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, H_diag=H_diag, prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss
