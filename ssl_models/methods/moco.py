"""MoCo v2: Chen et al., 2020, https://arxiv.org/abs/2003.04297 (MoCo v1: https://arxiv.org/abs/1911.05722)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import gather_with_grad, rank, world_size
from ssl_models.losses import moco_infonce
from ssl_models.methods.base import SSLMethod
from ssl_models.momentum import cosine_momentum, ema_update, frozen_copy
from ssl_models.queues import enqueue_from_every_worker
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method


class MoCoProjectionHead(nn.Sequential):
    """MoCo v2's MLP head: Linear -> ReLU -> Linear, without batch norm (arXiv:2003.04297, section 2)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


@register_method("moco")
class MoCo(SSLMethod):
    """Query encoder + MLP head, a momentum key encoder, and InfoNCE against a queue of keys.

    Paper defaults (MoCo v2): temperature 0.2, 128-d output of a 2048-d MLP head,
    queue of 65,536 keys, key-encoder momentum 0.999, SGD lr 0.03 x batch / 256.
    Here the queue holds 4,096 keys by default (small datasets; a 60k-image
    epoch would otherwise fill it with keys from a much older encoder), and the
    momentum follows ``cosine_momentum`` from 0.99 to 1.0 over training (BYOL's
    schedule, as MoCo v3 does) since short runs cannot afford 0.999's slow start.

    Deviations and details:
      * the loss is symmetrized (MoCo v3): each view is a query for the other
        view's key, and both views' keys are enqueued (2n keys per worker per step);
      * keys are enqueued after the optimizer step in ``on_step_end`` (the keys are
        stashed, detached, by ``training_step``), so ``forward`` never changes the
        queue and the loss of a step sees the queue of the previous steps only;
      * the enqueued keys are gathered from every worker in rank order, so every
        worker holds the same queue;
      * shuffling BN (MoCo v1, section 3.3): with more than one worker the key
        batch is shuffled across workers before the key encoder, so the batch-norm
        statistics of a key never come from the batch of its own query.

    ``proxy_acc``: fraction of queries whose positive key scores higher than every queued key.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2003.04297",
        optimizer="sgd",
        lr=0.03,
        weight_decay=1e-4,
        notes="MoCo v2 as published: SGD lr 0.03 for batch 256, wd 1e-4, cosine; its warm-up is none (here 10%).",
    )

    def __init__(
        self,
        temperature: float = 0.2,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        queue_size: int = 4096,
        momentum: float = 0.99,
        shuffle_bn: bool = True,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.temperature = temperature
        self.momentum = momentum
        self.shuffle_bn = shuffle_bn
        self.projection_head = MoCoProjectionHead(self.encoder.num_features, hidden_dim, projection_dim)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_head = frozen_copy(self.projection_head)
        # Buffers, not parameters: they move with .to(device), are saved in checkpoints and get no gradient.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None

    @torch.no_grad()
    def _key_projection(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_head(self.key_encoder(x)), dim=1)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized keys (n, D) of views x, through the key encoder, with shuffling BN across workers."""
        world = world_size()
        if not self.shuffle_bn or world == 1:
            return self._key_projection(x)
        n = x.shape[0]
        everyone = gather_with_grad(x)  # (n * world, ...); no_grad, so a plain all_gather
        perm = torch.randperm(everyone.shape[0], device=x.device)
        dist.broadcast(perm, src=0)  # one permutation for all workers
        mine = slice(rank() * n, (rank() + 1) * n)
        shuffled_keys = gather_with_grad(self._key_projection(everyone[perm[mine]]))
        keys = torch.empty_like(shuffled_keys)
        keys[perm] = shuffled_keys  # undo the shuffle: row j is the key of image j again
        return keys[mine]

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, x1 = batch["view_0"], batch["view_1"]
        q0 = self.projection_head(self.encoder(x0))
        q1 = self.projection_head(self.encoder(x1))
        k0, k1 = self.keys(x0), self.keys(x1)
        # Symmetrized: each view queries the other's key; both halves have n queries, so the mean of
        # the two losses is the loss over all 2n queries.
        loss0, acc0 = moco_infonce(q0, k1, self.queue, self.temperature, with_accuracy=True)
        loss1, acc1 = moco_infonce(q1, k0, self.queue, self.temperature, with_accuracy=True)
        # Enqueued only after the optimizer step (on_step_end): forward leaves the queue as it is.
        self._pending_keys = torch.cat([k0, k1]).detach()
        return {"loss": (loss0 + loss1) / 2, "proxy_acc": (acc0 + acc1) / 2}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write every worker's keys (rank order) into the ring buffer at the pointer, wrapping around."""
        enqueue_from_every_worker(self.queue, self.queue_ptr, keys)

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.momentum)
        ema_update(self.key_encoder, self.encoder, momentum)
        ema_update(self.key_head, self.projection_head, momentum)
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None
