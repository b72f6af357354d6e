"""Batch norm over every worker's batch: on 2 gloo processes, the same values and gradients as one process
normalizing the whole batch."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.sync_batchnorm import GlobalBatchNorm, convert_sync_batchnorm
from tests.ssl_models.gloo import run_distributed


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8))


def _batch() -> torch.Tensor:
    # the two halves differ in mean and scale, so per-worker statistics would differ from global ones
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 8, 8, generator=gen, dtype=torch.float64)
    x[8:] = 3 * x[8:] + 2
    return x


def _half(rank: int, world: int):
    net = convert_sync_batchnorm(_net().double())
    x = _batch()[rank * 8 : (rank + 1) * 8]
    y = net(x)
    y.pow(2).sum().backward()
    return {"y": y.detach(), "grad": net[0].weight.grad, "running_mean": net[1].running_mean.clone()}


def test_global_batchnorm_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    results = run_distributed(tmp_path, _half)
    net = _net().double()
    y = net(_batch())
    y.pow(2).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), y.detach())
    # each process holds the gradient of its half; DDP sums them, which is the whole batch's gradient
    torch.testing.assert_close(results[0]["grad"] + results[1]["grad"], net[0].weight.grad)
    for r in results:
        torch.testing.assert_close(r["running_mean"], net[1].running_mean)


def test_conversion_keeps_weights_and_state_dict_keys():
    net = _net()
    converted = convert_sync_batchnorm(_net())
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[4], GlobalBatchNorm)
    assert converted.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(converted(x), net(x))  # one process: plain batch norm
