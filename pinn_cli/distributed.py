"""Data-parallel training of one problem on several processes (torchrun, srun, submitit tasks).

Every rank draws the same collocation points (same seed, same RNG stream) and keeps its own slice
of each point set; the loss is wrapped in ``DistributedDataParallel`` so gradients are averaged
across ranks in backward. Per-term factors make the averaged loss equal the loss over all points,
so a run on N processes optimises the same objective as one process with the same total points.
The loss value every rank sees is the global one, which keeps L-BFGS (its line search and its
convergence tests) in step on all ranks. Rank 0 alone evaluates, logs, checkpoints and writes.

Launch: ``torchrun --nproc_per_node=N -m pinn_cli train ...`` (env:// rendezvous), or a SLURM
job with several tasks through the submitit launcher (``hydra.launcher.tasks_per_node=N``).
Without those (WORLD_SIZE unset or 1) everything here is a no-op and training is single-process.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime

import torch
import torch.distributed as dist
from torch import nn

from .errors import say_once

log = logging.getLogger("pinn")


@dataclass
class Context:
    """Where this process stands: world size, its rank, and its rank on this node."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _submitit_tasks() -> int:
    """Number of tasks of the submitit job this process runs in (1 outside submitit)."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_LOCAL_JOB_ID" not in os.environ:
        return 1
    try:
        import submitit

        return submitit.JobEnvironment().num_tasks
    except Exception:  # noqa: BLE001  (not inside a submitit job after all)
        return 1


def requested() -> bool:
    """True when this process was started as one of several ranks (torchrun, or a multi-task submitit job)."""
    return _env_int("WORLD_SIZE", 1) > 1 or _submitit_tasks() > 1


def backend() -> str:
    """``PINN_DIST_BACKEND`` if set; else gloo for CPU tensors and NCCL for CUDA tensors. NCCL refuses
    two ranks on one GPU: where every rank sees all of the node's GPUs (no CUDA_VISIBLE_DEVICES) and
    they are fewer than the node's ranks, gloo does it all. A set CUDA_VISIBLE_DEVICES may give each
    rank its own GPU (SLURM's per-task binding), so it keeps NCCL."""
    chosen = os.environ.get("PINN_DIST_BACKEND")
    if chosen:
        return chosen
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return "gloo"
    shared = "CUDA_VISIBLE_DEVICES" not in os.environ and gpus < _env_int("LOCAL_WORLD_SIZE", 1)
    return "gloo" if shared else "cpu:gloo,cuda:nccl"


def init() -> Context:
    """Join the process group when launched as several ranks; idempotent; a no-op for one process."""
    if dist.is_available() and dist.is_initialized():
        return context()
    if not requested():
        return Context()
    if _env_int("WORLD_SIZE", 1) <= 1:  # a multi-task submitit job: export RANK, WORLD_SIZE, MASTER_ADDR, ...
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    ctx = Context(_env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0))
    if torch.cuda.is_available() and torch.cuda.device_count():
        torch.cuda.set_device(ctx.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend())
    if not ctx.is_main:
        logging.getLogger("pinn").setLevel(logging.WARNING)  # rank 0 alone reports progress
    return context()


def context() -> Context:
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_world_size(), dist.get_rank(), _env_int("LOCAL_RANK", 0))
    return Context()


def is_main() -> bool:
    return context().is_main


def shutdown(finished: bool = False) -> None:
    """Leave the process group. After a run every rank finished (``finished``), the ranks meet at a
    barrier first, as PyTorch advises: a rank tearing its group down while another still uses it
    could hang at exit (seen with torch 2.4 under load). After an error there is no barrier: a rank
    that failed alone would leave the others waiting at it."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under several ranks, ``cuda`` (no index) means this rank's GPU: cuda:<LOCAL_RANK> among the visible ones."""
    ctx = context()
    if ctx.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    return device


def prepare_launch() -> None:
    """Before Hydra runs under torchrun: join the group, give every rank rank 0's ``${now:}`` (so all
    ranks resolve the same run directory), and keep ranks > 0 from writing ``.hydra/`` and train.log."""
    info_only = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion")
    if _env_int("WORLD_SIZE", 1) <= 1 or any(a in info_only for a in sys.argv):
        return
    if any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        say_once("pinn train: error: a sweep (-m) does not run under torchrun; launch one job per torchrun, "
                 "or sweep with hydra/launcher=slurm_gpu and hydra.launcher.tasks_per_node")
        sys.exit(2)
    ctx = init()
    stamp = [datetime.now().timestamp()]
    dist.broadcast_object_list(stamp, src=0)
    _fix_hydra_now(stamp[0])
    if not ctx.is_main:  # rank 0 writes the run directory and train.log, and says what went wrong
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]


def _fix_hydra_now(timestamp: float) -> None:
    """Hydra's ``now`` resolver reads ``hydra.core.utils.datetime.now()``: pin it to one instant."""
    import hydra.core.utils as hydra_utils

    class _Pinned(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(timestamp, tz)

    hydra_utils.datetime = _Pinned


@dataclass
class Shards:
    """This rank's slice of every point set, with the factors that make the averaged loss the full loss.

    A point set with fewer points than ranks (a single initial-value point, say) is not split: every
    rank uses all of it. ``full`` keeps the whole sets (for checkpoints, which must not depend on the
    number of ranks)."""

    ctx: Context
    problem: object
    full: dict = field(default_factory=dict)
    factors: list = field(default_factory=list)

    def update(self) -> None:
        """Call after ``problem.sample`` or ``problem.load_state``: keep the full sets, then slice."""
        terms = self.problem.terms
        if not self.ctx.distributed:
            self.factors = [1.0] * len(terms)
            return
        self.full = {t.name: (t.x, t.normals) for t in terms}
        self.factors = []
        for t in terms:
            n = len(t.x)
            if n < self.ctx.world:
                self.factors.append(1.0)
                continue
            t.x = torch.tensor_split(t.x, self.ctx.world)[self.ctx.rank]
            if t.normals is not None:
                t.normals = torch.tensor_split(t.normals, self.ctx.world)[self.ctx.rank]
            self.factors.append(len(t.x) * self.ctx.world / n)

    def state(self) -> dict:
        """The points of every term, as ``Problem.state()`` gives them for one process."""
        if not self.ctx.distributed:
            return self.problem.state()
        return {k: (x.cpu(), None if n is None else n.cpu()) for k, (x, n) in self.full.items()}


class _GlobalLoss(nn.Module):
    """The problem's loss on this rank's points as a module, so DDP can wrap it and average gradients.

    Returns the global loss value (all-reduced) carrying this rank's gradient, and the global terms."""

    def __init__(self, problem, shards: Shards) -> None:
        super().__init__()
        self.net = problem.net
        self._problem, self._shards = problem, shards

    def forward(self):
        _, parts = self._problem.loss()
        scaled = [f * p for f, p in zip(self._shards.factors, parts)]
        local = sum(t.weight * s for t, s in zip(self._problem.terms, scaled))
        stats = torch.stack([local.detach(), *[s.detach() for s in scaled]])
        dist.all_reduce(stats)
        stats = stats / self._shards.ctx.world
        total = local + (stats[0] - local.detach())
        return total, list(stats[1:])


def loss_function(problem, shards: Shards, device: torch.device):
    """``problem.loss`` for one process; under several ranks a DDP-wrapped loss with the same signature."""
    if not shards.ctx.distributed:
        return problem.loss
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_GlobalLoss(problem, shards), device_ids=ids)


def agree(signum: int | None) -> int | None:
    """The stop signal as all ranks see it (any rank signalled: all stop at the same step)."""
    ctx = context()
    if not ctx.distributed:
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def share(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (the final metrics, so every rank returns the same)."""
    if not context().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
