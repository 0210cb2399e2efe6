"""The one loop that trains a network: shuffled batches, a loss, an optimiser step.

Training (ttfs.sw.training), fine-tuning for hardware (ttfs.sw.finetune:
through the forward pass with the hardware's imperfections) and
quantisation-aware fine-tuning of the integer network (ttfs.sw.quantize:
through the contract's integer forward) differ only in the forward pass and
loss they train through, which they pass in as ``loss_and_logits``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn
from ttfs.contract.errors import TTFSError

#: A batch's (loss to minimise, logits whose argmax is the prediction), from (images, labels).
LossAndLogits = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Shard(Protocol):
    """This process's part of every batch when several processes train one network (ttfs.sw.distributed)."""

    world_size: int

    def part(self, index: torch.Tensor) -> torch.Tensor:
        """The indices of a global batch this process trains on."""
        ...

    def sum(self, values: Sequence[float]) -> list[float]:
        """Every process's ``values`` summed, element by element."""
        ...


def check_fit_settings(error: type[TTFSError], epochs: int, lr: float, batch_size: int, prefix: str = "") -> None:
    """Refuse a negative or non-integer epoch count, a non-positive rate or batch size (``error``, names prefixed)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise error(f"{prefix}epochs: {epochs!r} is not an integer >= 0")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise error(f"{prefix}lr: {lr!r} must be a positive number")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise error(f"{prefix}batch size: {batch_size!r} is not an integer >= 1")


def batch_indices(count: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over ``count`` items, shuffled by ``generator`` (in order when None)."""
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    return iter(order.split(batch_size))


def fit_epoch(
    model: nn.Module,
    loss_and_logits: LossAndLogits,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    *,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_step: Callable[[float], None] | None = None,
    shard: Shard | None = None,
) -> tuple[float, float]:
    """One pass over the data in batches shuffled by ``generator``: (mean loss, accuracy) seen while training.

    ``schedule`` steps after every optimiser step; ``on_step`` receives each
    batch's loss.  With ``shard`` this process is one of several that train
    ``model`` (wrapped in DistributedDataParallel, which averages their
    gradients): every process draws the same global batches and trains on
    its part of each, its loss weighted by its share of the batch, so the
    averaged gradient is the global batch's mean, as in one process; the
    returned figures are the whole epoch's.
    """
    model.train()
    total_loss, correct = 0.0, 0
    for index in batch_indices(len(labels), batch_size, generator):
        local = index if shard is None else shard.part(index)
        batch_labels = labels[local]
        loss, logits = loss_and_logits(images[local], batch_labels)
        step_loss = loss
        if shard is not None:
            # A process without images in a short last batch still joins the gradient average, with zero.
            step_loss = loss * (len(local) * shard.world_size / len(index)) if len(local) else logits.sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        batch_loss = float(loss.detach()) if len(local) else 0.0
        total_loss += batch_loss * len(local)
        correct += int((logits.detach().argmax(dim=1) == batch_labels).sum())
        if on_step is not None:
            on_step(batch_loss)
    if shard is not None:
        total_loss, correct = shard.sum([total_loss, correct])
    return total_loss / len(labels), correct / len(labels)


def adam_epochs(
    model: nn.Module,
    loss_and_logits: LossAndLogits,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    *,
    lr: float,
    batch_size: int,
    seed: int,
    on_step: Callable[[float], None] | None = None,
) -> Iterator[tuple[int, float, float]]:
    """Fine-tuning: Adam (``lr``) on every parameter of ``model`` for ``epochs`` epochs, batch order fixed by ``seed``.

    Yields (epoch, mean loss, accuracy seen while training) after each
    epoch, so the caller can evaluate between epochs.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        loss, accuracy = fit_epoch(model, loss_and_logits, images, labels, optimizer, batch_size, generator, on_step=on_step)
        yield epoch, loss, accuracy
