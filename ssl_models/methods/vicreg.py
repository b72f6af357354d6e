"""VICReg: Bardes et al., 2021, https://arxiv.org/abs/2105.04906."""

from __future__ import annotations

import torch

from ssl_models.heads import ProjectionHead
from ssl_models.losses import vicreg
from ssl_models.methods.base import SSLMethod
from ssl_models.proxy import nearest_neighbour_accuracy
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


@register_method("vicreg")
class VICReg(SSLMethod):
    """Two views through one encoder + expander; invariance, variance and covariance terms on the embeddings.

    Loss: ``sim_weight * MSE + var_weight * variance hinge + cov_weight * covariance`` over the
    global batch (see ``ssl_models.losses.vicreg``); the three unweighted terms are also returned
    so they can be logged.

    Paper defaults (ImageNet): 3-layer expander 8192-8192-8192 (Linear -> BN -> ReLU twice, then
    Linear), sim_weight = var_weight = 25, cov_weight = 1, LARS with lr = 0.2 x batch / 256,
    weight decay 1e-6. The pipeline passes ``projection_dim`` and ``hidden_dim`` from its config.

    ``proxy_acc``: how often the embedding of the other view of the same image is the nearest
    (cosine) among the batch's embeddings of that view.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2105.04906",
        sync_batchnorm=True,
        **SHARED_SGD,
        cpu_kwargs={"projection_dim": 1024, "hidden_dim": 1024},
        notes="Paper: LARS lr 0.2 x B/256 (biases and norms unadapted and undecayed), wd 1e-6, 10 warm-up "
        "epochs, batch 2048; not yet measured here against the shared SGD recipe. Expander 8192 -> 1024 on CPUs.",
    )

    loss_fn = staticmethod(vicreg)  # the weighted loss, and the unweighted terms for logging

    def __init__(
        self,
        projection_dim: int = 8192,
        hidden_dim: int = 8192,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        for name, weight in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        self.loss_weights = {"sim_weight": sim_weight, "var_weight": var_weight, "cov_weight": cov_weight}
        self.projector = ProjectionHead(self.encoder.num_features, hidden_dim, projection_dim, num_layers=3)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z0 = self.projector(self.encoder(batch["view_0"]))
        z1 = self.projector(self.encoder(batch["view_1"]))
        loss, terms = self.loss_fn(z0, z1, **self.loss_weights, with_terms=True)
        out = {"loss": loss, "proxy_acc": nearest_neighbour_accuracy(z0, z1)}
        out.update({name: value.detach() for name, value in terms.items()})
        return out
