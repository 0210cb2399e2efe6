"""Devices and processes: where a network trains, and training on several processes started by torchrun.

Devices: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or
``cuda``; :func:`resolve_device` refuses ``cuda`` in one line where there is
no CUDA.  The toolkit's code is device-generic: parameters, data and every
tensor a forward pass makes live on the network's device; random draws
(initial weights, batch order, spike-time noise) are made on the CPU, so a
run draws the same numbers on any device.

Processes: ``torchrun --nproc-per-node N -m ttfs.cli.main train ...`` starts
N processes (on one machine or several) with the environment variables of
:data:`TORCHRUN_VARIABLES`; :func:`processes` joins their group (gloo on the
CPU, nccl on GPUs).  Training then wraps the network in
DistributedDataParallel, and :class:`Processes` is the ttfs.sw.fitting
``Shard``: every process draws the same shuffled global batches (one seed)
and trains on its contiguous part of each, weighted so that the averaged
gradient is the global batch's mean.  The window rule of a TTFS network
takes the largest activation of the GLOBAL batch (an all-reduce of the
maxima): every process grows the same windows, and the distributed network
stays equal to its ReLU twin, exactly as in one process.  Only process 0
evaluates and writes the run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from ttfs.contract.errors import TTFSError

DEVICES = ("auto", "cpu", "cuda")

#: What torchrun sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

LAUNCH_HINT = "torchrun --nproc-per-node N -m ttfs.cli.main train ..."


class DistributedError(TTFSError):
    """A device or a set of processes cannot be used."""


def resolve_device(name: str) -> torch.device:
    """The torch device of ``auto``, ``cpu`` or ``cuda`` (DistributedError where CUDA is absent)."""
    if name not in DEVICES:
        raise DistributedError(f"device: {name!r} is not one of {', '.join(DEVICES)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no GPU"
        raise DistributedError(f"device cuda: CUDA is not available ({why}); use --device cpu or auto")
    return torch.device("cuda")


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun started."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes that train one network, and what they share."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True for process 0, the one that evaluates and writes the run."""
        return self.rank == 0

    def part(self, index: torch.Tensor) -> torch.Tensor:
        """This process's contiguous part of a global batch (parts differ in size by at most one)."""
        return index.tensor_split(self.world_size)[self.rank]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Every process's ``values`` summed, element by element (float64, exact for counts)."""
        total = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total.tolist()

    def global_max(self, value: torch.Tensor) -> torch.Tensor:
        """The largest of every process's ``value`` (a 0-dim tensor)."""
        largest = value.detach().clone()
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        return largest

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel, its window rule taking global batch maxima.

        Batch norm becomes SyncBatchNorm (statistics of the global batch, as
        in one process); torch runs that on GPUs only, so on the CPU a
        network with batch norm is refused.  The windows agree on every
        process because each applies the same rule to the same global
        maximum (DDP's broadcast of process 0's buffers changes nothing).
        """
        has_batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
        if has_batch_norm:
            if self.device.type != "cuda":
                raise DistributedError(
                    "batch_norm: batch norm over several processes needs GPUs (torch's SyncBatchNorm); "
                    "train batch-norm networks on the CPU in one process"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if hasattr(model, "reduce_batch_max"):
            model.reduce_batch_max = self.global_max
        device_ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (``model`` itself otherwise), the window
    rule back to one process's batches."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if getattr(model, "reduce_batch_max", None) is not None:
        del model.reduce_batch_max
    return model


def _environment_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise DistributedError(f"{name}: {os.environ.get(name)!r} is not set to an integer; start with {LAUNCH_HINT}") from None


@contextlib.contextmanager
def processes(device: str = "auto") -> Iterator[Processes]:
    """Join the process group torchrun set up (gloo on the CPU, nccl on GPUs) for the duration.

    On GPUs each process takes the GPU of its LOCAL_RANK.
    """
    if not launched_by_torchrun():
        missing = ", ".join(name for name in TORCHRUN_VARIABLES if name not in os.environ)
        raise DistributedError(f"distributed training: not started by torchrun (no {missing}); start with {LAUNCH_HINT}")
    if not torch.distributed.is_available():
        raise DistributedError("distributed training: this torch was built without torch.distributed")
    rank, world_size, local_rank = (_environment_int(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    torch.distributed.init_process_group("nccl" if chosen.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        yield Processes(rank, world_size, chosen)
    finally:
        torch.distributed.destroy_process_group()
