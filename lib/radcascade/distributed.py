"""Training on several processes (GPUs of a workstation, or machines) with ``torch.distributed``.

How a run is split (``radcascade.training.Trainer`` with a :class:`Distributed` context):

* every rank caches all training studies and draws the same augmented patches (seeded per study and
  epoch) in the same shuffled order; each *global* batch of ``batch_size x world_size`` patches is cut
  into one slice per rank (the last, incomplete global batch is dropped when ``world_size > 1``);
* the network is wrapped in ``DistributedDataParallel`` (gradients averaged across ranks), and the
  loss is :class:`BatchDiceCELoss`, whose Dice statistics are summed across ranks first, so the
  gradient is that of one process seeing the whole global batch;
* validation studies are split across ranks and their Dice statistics summed, so every rank takes
  the same "best epoch" decision; only rank 0 writes statistics and publishes the model (atomically,
  at the end): a rank that dies makes the others fail at their next collective (after
  ``timeout_s``) and nothing is published.

Launch: ``torchrun --nproc_per_node 2 -m radcascade.training ...`` (several machines: add
``--nnodes N --node_rank i --rdzv_endpoint host:port``), or from the server, the ``multi_gpu``
train option (:func:`spawn`).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a run (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    in_group: bool = False  # part of a process group (DDP is used, even with one process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.in_group

    @classmethod
    def current(cls) -> "Distributed":
        if torch_dist.is_available() and torch_dist.is_initialized():
            return cls(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)
        return cls()

    def device(self) -> torch.device:
        """One GPU per local rank when there are GPUs, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over all ranks (identity on one process)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        torch_dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says True (e.g. the time budget is spent)."""
        return bool(self.sum(float(flag))[0]) if self.active else flag

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    @staticmethod
    def _collective_device() -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if torch_dist.get_backend() == "nccl" else torch.device("cpu")


def init_from_env(timeout_s: float = 120.0) -> Distributed:
    """Join the process group ``torchrun`` (or :func:`spawn`) described in the environment."""
    if "MASTER_ADDR" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()  # a plain single process
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = Distributed.current()
    if torch.cuda.is_available():
        torch.cuda.set_device(ctx.device())
    return ctx


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, world_size: int, port: int, timeout_s: float, work: Callable, args: tuple) -> None:
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    ctx = init_from_env(timeout_s)
    try:
        work(ctx, *args)
    finally:
        shutdown()


def spawn(world_size: int, work: Callable, *args, timeout_s: float = 120.0) -> None:
    """Run ``work(ctx, *args)`` on ``world_size`` local processes (one per GPU, or gloo on the CPU);
    raises if any of them fails.  ``work`` must be a module-level function (it is pickled)."""
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(world_size, free_port(), timeout_s, work, args), nprocs=world_size, join=True)


class BatchDiceCELoss(torch.nn.Module):
    """Cross-entropy + soft Dice over the whole batch (MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True, batch=True)``), with the Dice statistics summed over all ranks when distributed:
    with DDP's gradient averaging this gives exactly one process's gradient for the global batch."""

    def __init__(self, distributed: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.distributed = distributed
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: optional per-voxel weights of the cross-entropy, ``[B, *spatial]`` (the mean of
        weighted terms: a weight above 1 adds to the loss, it takes nothing from the other voxels)."""
        labels = target[:, 0].long()
        ce = F.cross_entropy(logits, labels) if weights is None else (F.cross_entropy(logits, labels, reduction="none") * weights).mean()
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        dims = [0, *range(2, logits.ndim)]
        stats = torch.stack([(probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)])
        if self.distributed:
            import torch.distributed.nn.functional as dist_nn

            # Every rank computes the same global Dice; the all-reduce's backward sums the ranks'
            # gradients (x world size) and DDP averages them (/ world size): each counts once.
            stats = dist_nn.all_reduce(stats)
        tp, pred, truth = stats
        dice = 1.0 - (2.0 * tp + self.smooth) / (pred + truth + self.smooth)
        return ce + dice.mean()
