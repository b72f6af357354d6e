"""SwAV: Caron et al., 2020, https://arxiv.org/abs/2006.09882."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import world_size
from ssl_models.losses import swapped_prediction_loss, swav_codes
from ssl_models.methods.base import SSLMethod
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method

CROPS_FOR_ASSIGN = (0, 1)  # the two global crops give the codes, as in the paper


class SwAVProjectionHead(nn.Sequential):
    """SwAV's head: Linear -> BatchNorm -> ReLU -> Linear (``src/resnet50.py``'s ``projection_head``)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )


@register_method("swav")
class SwAV(SSLMethod):
    """Swapped assignments: each global crop's Sinkhorn codes on learned prototypes are predicted by every other crop.

    Paper defaults (facebookresearch/swav): 2 x 224 + 6 x 96 px crops (global scale 0.14-1,
    local 0.05-0.14), 128-d L2-normalized embedding from a 2048-d MLP head with batch norm,
    3,000 prototypes (a linear layer without bias, rows renormalized every step),
    temperature 0.1, Sinkhorn epsilon 0.05 and 3 iterations, codes from crops 0 and 1,
    prototypes frozen for the first 313 iterations; at batch 256, a queue of 3,840 embeddings
    from epoch 15 (of 200), LARS lr 0.6, wd 1e-6. Here:
      * views: the "multi_crop" policy (``ssl_models.views.multi_crop``) with 2 global + 4 local crops
        by default (``num_local_crops``; 12 px local crops at 28 px, the paper's 96 / 224 ratio),
        and the paper's crop scales (``view_kwargs``): 4 local crops, not 6, to fit 2 CPU cores;
      * the queue (``queue_length`` embeddings per assigning crop, split over the workers as the
        authors do: each worker keeps ``queue_length // world_size`` of its own) starts filling
        once ``queue_start_share`` of the run is done (the method sees the step and the run's
        length, not epochs: the paper's 15 epochs of 200 is 0.075), and is used for the codes
        once full; it is filled in ``on_step_end`` from the embeddings stashed (detached) by
        ``training_step``, so a step's codes see only earlier steps' embeddings;
      * the prototypes get a zero gradient (``torch.where`` on a detached copy: DDP still sees a
        gradient for every parameter) for the first ``freeze_prototypes_share`` of the run, counted in
        buffers by ``on_step_end`` (the paper's 313 iterations are 0.5% of its 200 epochs at batch 4,096;
        a fixed 313 would freeze them through a whole short run; the first step is always frozen);
        the paper drops the gradient (``p.grad = None``),
        which also skips weight decay; here the decay only shrinks the rows, renormalized after;
      * the rows of the prototypes are L2-normalized at init and in ``on_step_end``, after the
        optimizer step (the authors do it before each forward pass: the same sequence).

    Distributed: the Sinkhorn sums are all-reduced, so the codes are those of the global batch.

    ``proxy_acc``: fraction of samples whose prediction from one global crop (argmax of its
    scores) is the prototype the other global crop's code puts most weight on (both pairs).
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2006.09882",
        sync_batchnorm=True,
        optimizer="lars",
        lr=0.6,
        weight_decay=1e-6,
        momentum=0.9,
        warmup_share=0.0,
        notes="The authors' batch-256 recipe (scripts/swav_200ep_bs256_pretrain.sh): LARS lr 0.6 (cosine to 0.0006), "
        "wd 1e-6, no warm-up, sync BN, queue 3840 from epoch 15 of 200, prototypes frozen for 1 epoch (5005 steps; "
        "313 at batch 4096, the method's default). Their LARC adapts biases and norms too; here those train at "
        "the plain rate. 2 global + 4 local crops (the paper: 6); the paper's head sizes fit 2 CPU cores.",
    )

    view_policy = "multi_crop"
    num_views = 6  # 2 global + 4 local crops, the default; instances with other counts set their own
    view_kwargs = {"global_scale": (0.14, 1.0), "local_scale": (0.05, 0.14)}

    def __init__(
        self,
        temperature: float = 0.1,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        num_prototypes: int = 3000,
        num_local_crops: int = 4,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_length: int = 3840,
        queue_start_share: float = 0.075,
        freeze_prototypes_share: float = 0.005,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if temperature <= 0 or epsilon <= 0:
            raise ValueError(f"temperature and epsilon must be > 0, got {temperature} and {epsilon}")
        if num_local_crops < 0 or num_prototypes < 1 or sinkhorn_iterations < 1:
            raise ValueError(
                f"need num_local_crops >= 0, num_prototypes >= 1 and sinkhorn_iterations >= 1, got "
                f"{num_local_crops}, {num_prototypes}, {sinkhorn_iterations}"
            )
        if queue_length < 0 or not 0.0 <= queue_start_share <= 1.0 or not 0.0 <= freeze_prototypes_share <= 1.0:
            raise ValueError(
                f"need queue_length >= 0, and queue_start_share and freeze_prototypes_share in [0, 1], "
                f"got {queue_length}, {queue_start_share}, {freeze_prototypes_share}"
            )
        self.num_views = 2 + num_local_crops
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations
        self.queue_start_share = queue_start_share
        self.freeze_prototypes_share = freeze_prototypes_share
        self.projection_head = SwAVProjectionHead(self.encoder.num_features, hidden_dim, projection_dim)
        self.prototypes = nn.Linear(projection_dim, num_prototypes, bias=False)
        self.normalize_prototypes()
        # Each worker queues its own embeddings (the Sinkhorn all-reduce joins them), as main_swav.py does.
        local_length = queue_length // world_size()
        # Not in the state dict: its length depends on the worker count, so a checkpoint would not load into
        # the driver's probe (one process) or a restart on other workers; after a restart it refills.
        queue = torch.zeros(len(CROPS_FOR_ASSIGN), local_length, projection_dim)
        self.register_buffer("queue", queue, persistent=False)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # frozen until this many steps are done: the first step, until on_step_end knows the run's length
        self.register_buffer("frozen_steps", torch.tensor(int(freeze_prototypes_share > 0), dtype=torch.long))
        self._pending_embeddings: torch.Tensor | None = None

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embeddings(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """L2-normalized embeddings (n, D) of every crop; one encoder pass per crop size, as in the paper."""
        features = [self.encoder(torch.cat(crops[:2]))]
        if len(crops) > 2:
            features.append(self.encoder(torch.cat(crops[2:])))
        z = F.normalize(self.projection_head(torch.cat(features)), dim=1)
        return list(z.chunk(len(crops)))

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.embeddings(self.crops_of(batch))
        weight = self.prototypes.weight
        # Frozen prototypes: a zero gradient, not none, so DDP reduces the same parameters every step.
        weight = torch.where(self.steps_done < self.frozen_steps, weight.detach(), weight)
        scores = [F.linear(zi, weight) for zi in z]
        queue_scores = None
        if self.queue.shape[1] > 0 and self.queue_filled >= self.queue.shape[1]:
            with torch.no_grad():
                queue_scores = [F.linear(self.queue[i].to(z[0].dtype), weight) for i in range(len(CROPS_FOR_ASSIGN))]
        codes = swav_codes(scores, self.epsilon, self.sinkhorn_iterations, CROPS_FOR_ASSIGN, queue_scores)
        loss = swapped_prediction_loss(scores, codes, self.temperature, CROPS_FOR_ASSIGN)
        # Queued only after the optimizer step (on_step_end): forward leaves the queue as it is.
        self._pending_embeddings = torch.stack([z[c] for c in CROPS_FOR_ASSIGN]).detach()
        with torch.no_grad():
            target = [q.argmax(dim=1) for q in codes]
            hits = [scores[1].argmax(dim=1) == target[0], scores[0].argmax(dim=1) == target[1]]
            proxy_acc = torch.cat(hits).float().mean()
        return {"loss": loss, "proxy_acc": proxy_acc}

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor) -> None:
        """Write this worker's embeddings (crops, n, D) into each crop's ring buffer at the pointer."""
        length = self.queue.shape[1]
        if length == 0:
            return
        embeddings = embeddings[:, -length:]  # a batch larger than the queue keeps its last rows
        n = embeddings.shape[1]
        slots = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % length
        self.queue[:, slots] = embeddings.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % length)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + n, max=length))

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.steps_done.fill_(step + 1)
        self.frozen_steps.fill_(math.ceil(self.freeze_prototypes_share * total_steps))
        self.normalize_prototypes()
        if self._pending_embeddings is not None:
            if step + 1 >= self.queue_start_share * total_steps:
                self.enqueue(self._pending_embeddings)
            self._pending_embeddings = None
