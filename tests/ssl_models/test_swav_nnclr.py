"""SwAV and NNCLR: losses against NumPy references, Sinkhorn's marginals (one and two processes), queues."""

import numpy as np
import pytest
import torch

import ssl_models
from ssl_models.losses import nearest_neighbours, nnclr_loss, sinkhorn_codes, swav_loss
from tests.conftest import correct_of
from tests.ssl_models.gloo import run_distributed


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _one_step(method, images: torch.Tensor) -> dict:
    """make_views -> training_step -> SGD step -> on_step_end, as the pipeline's loop does."""
    views = method.make_views(seed=0)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    out = method(views.apply(images))
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    method.on_step_end(0, 10)
    return out


# ---------------------------------------------------------------- SwAV


def sinkhorn_reference(out: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """main_swav.py's distributed_sinkhorn in one process, step by step."""
    q = np.exp(out / epsilon).T  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def swav_reference(outputs: list[np.ndarray], queues: list[np.ndarray] | None, tau=0.1, eps=0.05, iters=3) -> float:
    """main_swav.py's train loop: for each crop in crops_for_assign, codes (queue rows first), swapped over crops."""
    loss = 0.0
    for i, crop_id in enumerate([0, 1]):
        out = outputs[crop_id]
        if queues is not None:
            out = np.concatenate([queues[i], out])
        q = sinkhorn_reference(out, eps, iters)[-len(outputs[crop_id]) :]
        subloss = 0.0
        for v in np.delete(np.arange(len(outputs)), crop_id):
            subloss -= np.mean(np.sum(q * _log_softmax(outputs[v] / tau), axis=1))
        loss += subloss / (len(outputs) - 1)
    return loss / 2


def _scores(rng, n: int, k: int, d: int = 8) -> np.ndarray:
    return _unit(rng.normal(size=(n, d))) @ _unit(rng.normal(size=(k, d))).T  # cosine scores, as the method's


def test_sinkhorn_matches_the_authors_and_its_codes_are_an_equipartition():
    rng = np.random.default_rng(0)
    scores = _scores(rng, 24, 6)
    codes = sinkhorn_codes(torch.tensor(scores), epsilon=0.05, iterations=3).numpy()
    np.testing.assert_allclose(codes, sinkhorn_reference(scores, 0.05, 3), atol=1e-5)
    # each sample's code sums to 1 (the last step of every round, then times B), codes are non-negative
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-3)
    assert (codes >= 0).all()
    # the prototypes' marginals approach B / K each as the rounds go on (3 rounds leave them 36% off here):
    # run to convergence, the codes are doubly stochastic (rows sum to 1, columns to B / K = 4)
    converged = sinkhorn_codes(torch.tensor(scores), epsilon=0.05, iterations=100).numpy()
    np.testing.assert_allclose(converged.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(converged.sum(axis=0) / 4, 1.0, atol=1e-3)
    off = [np.abs(sinkhorn_codes(torch.tensor(scores), 0.05, it).numpy().sum(axis=0) / 4 - 1).max() for it in (3, 10, 30)]
    assert off[0] > off[1] > off[2]
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_codes(torch.tensor(scores), epsilon=0.0)


@pytest.mark.parametrize("crops", [2, 4])
@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_matches_main_swav(crops, with_queue):
    rng = np.random.default_rng(crops + 10 * with_queue)
    outputs = [_scores(rng, 5, 7) for _ in range(crops)]
    queues = [_scores(rng, 9, 7) for _ in range(2)] if with_queue else None
    got = swav_loss(
        [torch.tensor(o) for o in outputs], queue_scores=None if queues is None else [torch.tensor(q) for q in queues]
    ).item()
    assert got == pytest.approx(swav_reference(outputs, queues), abs=1e-5)


def _on_my_half(rank: int, world: int, scores: torch.Tensor, nn: torch.Tensor, p: torch.Tensor) -> tuple:
    """Sinkhorn codes of this rank's half of the scores, and the NNCLR loss of its half of the pairs."""
    n, m = scores.shape[0] // world, nn.shape[0] // world
    return sinkhorn_codes(scores[rank * n : (rank + 1) * n]), nnclr_loss(
        nn[rank * m : (rank + 1) * m], p[rank * m : (rank + 1) * m]
    )


def test_sinkhorn_and_nnclr_on_two_gloo_processes_equal_one_process_on_the_whole_batch(tmp_path):
    """One spawn for both (each costs seconds): SwAV's all-reduced Sinkhorn, NNCLR's gathered predictions."""
    scores = torch.tensor(_scores(np.random.default_rng(3), 16, 5), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    nn, p = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    (codes0, loss0), (codes1, loss1) = run_distributed(tmp_path, _on_my_half, scores, nn, p)
    torch.testing.assert_close(torch.cat([codes0, codes1]), sinkhorn_codes(scores), atol=1e-6, rtol=1e-5)
    # one process on half the batch alone gives other codes: the all-reduce matters
    assert not torch.allclose(codes0, sinkhorn_codes(scores[:8]), atol=1e-4)
    # every worker's denominator runs over the global batch: the mean over workers is the whole batch's loss
    assert float(loss0 + loss1) / 2 == pytest.approx(nnclr_loss(nn, p).item(), abs=1e-6)
    assert float(loss0) != pytest.approx(nnclr_loss(nn[:4], p[:4]).item(), abs=1e-4)


def _swav(**kwargs):
    return ssl_models.create_method(
        "swav", backbone="tiny_cnn", in_channels=1, image_size=16, hidden_dim=16, projection_dim=8, num_prototypes=6, **kwargs
    )


def test_swav_step_normalizes_prototypes_freezes_them_first_and_fills_the_queue():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (6, 20, 20, 1), dtype=torch.uint8)
    method = _swav(queue_length=12, queue_start_share=0.0, freeze_prototypes_share=0.1, num_local_crops=2)
    assert method.make_views().num_views == 4 and method.queue.shape == (2, 12, 8)
    before = method.prototypes.weight.detach().clone()
    out = _one_step(method, images)
    correct_of(out["proxy_acc"].item(), 12)  # each global crop's prediction of the other's code, for 6 images
    # frozen for the first step: a zero gradient (not none: DDP reduces it), rows still unit length
    assert method.prototypes.weight.grad is not None and method.prototypes.weight.grad.abs().sum() == 0
    torch.testing.assert_close(method.prototypes.weight, before)
    assert int(method.steps_done) == 1 and int(method.frozen_steps) == 1  # 0.1 of the 10-step run
    # the queue holds both global crops' embeddings of the step, unit length; not full, so not used yet
    assert int(method.queue_filled) == 6
    torch.testing.assert_close(method.queue[:, :6].norm(dim=-1), torch.ones(2, 6))
    assert method.queue[:, 6:].abs().sum() == 0
    # second step: the prototypes train, and are renormalized after the optimizer step
    _one_step(method, images)
    assert method.prototypes.weight.grad.abs().sum() > 0
    assert not torch.allclose(method.prototypes.weight, before)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(6))
    assert int(method.queue_filled) == 12  # now full: the next step's codes use it
    # the queue's length depends on the worker count: kept out of the checkpoint, so the driver's probe
    # (one process) loads what 2 workers trained
    other = _swav(queue_length=24, queue_start_share=0.0, freeze_prototypes_share=0.1, num_local_crops=2)
    other.load_state_dict(method.state_dict())
    assert not {"queue", "queue_ptr", "queue_filled"} & set(method.state_dict())


def test_swav_uses_the_full_queue_for_codes_and_starts_it_at_its_share_of_the_run():
    torch.manual_seed(0)
    method = _swav(queue_length=4, queue_start_share=0.5, num_local_crops=0)
    method.train()
    views = {f"view_{i}": torch.randn(4, 1, 16, 16) for i in range(2)}
    method.training_step(views)
    method.on_step_end(3, 10)  # 4 of 10 steps done: before the queue starts
    assert int(method.queue_filled) == 0
    method.training_step(views)
    method.on_step_end(4, 10)  # half the run: the queue fills
    assert int(method.queue_filled) == 4
    # with a full queue the loss is the reference's over queue + batch
    method.eval()  # batch-norm statistics fixed, so both passes see the same embeddings
    with torch.no_grad():
        loss = method.training_step(views)["loss"].item()
        z = method.embeddings([views["view_0"], views["view_1"]])
        w = method.prototypes.weight
        outputs = [(zi @ w.T).double().numpy() for zi in z]
        queues = [(method.queue[i] @ w.T).double().numpy() for i in range(2)]
    assert loss == pytest.approx(swav_reference(outputs, queues), abs=1e-5)
    assert loss != pytest.approx(swav_reference(outputs, None), abs=1e-4)


# ---------------------------------------------------------------- NNCLR


def nnclr_reference(z: np.ndarray, support: np.ndarray, p: np.ndarray, tau: float) -> float:
    """Equation 2 of NNCLR, one sample at a time, with a brute-force nearest neighbour (max cosine)."""
    z, support, p = _unit(z), _unit(support), _unit(p)
    total = 0.0
    for i in range(len(z)):
        nn = max(support, key=lambda q: float(z[i] @ q))
        total += -np.log(np.exp(nn @ p[i] / tau) / sum(np.exp(nn @ p[k] / tau) for k in range(len(p))))
    return total / len(z)


def test_nearest_neighbour_is_the_true_nearest_in_the_queue():
    rng = np.random.default_rng(0)
    z, support = rng.normal(size=(7, 5)), rng.normal(size=(30, 5)) * rng.uniform(0.1, 3, size=(30, 1))
    nn, index = nearest_neighbours(torch.tensor(z), torch.tensor(support))
    brute = [max(range(30), key=lambda j: float(_unit(z[i]) @ _unit(support[j]))) for i in range(7)]
    assert index.tolist() == brute  # cosine, not dot product: the rows have different norms
    np.testing.assert_allclose(nn.numpy(), _unit(support[brute]), atol=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nnclr_loss_matches_equation_2_and_gives_no_gradient_to_the_neighbour(tau):
    rng = np.random.default_rng(1)
    z, support, p = rng.normal(size=(6, 4)), rng.normal(size=(20, 4)), rng.normal(size=(6, 4))
    neighbours = nearest_neighbours(torch.tensor(z), torch.tensor(support))[0].requires_grad_(True)
    predictions = torch.tensor(p, requires_grad=True)
    loss = nnclr_loss(neighbours, predictions, temperature=tau)
    assert loss.item() == pytest.approx(nnclr_reference(z, support, p, tau), abs=1e-5)
    loss.backward()
    assert neighbours.grad is None and predictions.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        nnclr_loss(neighbours, predictions, temperature=0.0)


def _nnclr(**kwargs):
    return ssl_models.create_method(
        "nnclr",
        backbone="tiny_cnn",
        in_channels=1,
        image_size=16,
        hidden_dim=16,
        projection_dim=8,
        prediction_hidden_dim=16,
        **kwargs,
    )


def test_nnclr_support_set_changes_in_on_step_end_and_supplies_the_positives():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (6, 20, 20, 1), dtype=torch.uint8)
    method = _nnclr(queue_size=8)
    _one_step(method, images)
    assert int(method.queue_filled) == 6 and int(method.queue_ptr) == 6
    torch.testing.assert_close(method.queue[:6].norm(dim=1), torch.ones(6))
    first = method.queue.clone()
    _one_step(method, images)  # wraps around the 8 slots: 2 at the end, then 4 from the start
    assert int(method.queue_filled) == 8 and int(method.queue_ptr) == 4
    assert not torch.equal(method.queue, first) and torch.equal(method.queue[4:6], first[4:6])
    # the positives are rows of the support set: each the nearest of the embedding
    z = torch.randn(3, 8)
    nn = method.neighbours(z)
    assert all(any(torch.allclose(row, q) for q in method.queue) for row in nn)
