"""The PyTorch side of the recipe: LeNet-300-100 and LeNet-5, training with masks or codebooks, evaluation.

Weights cross into coreprune only as ``dict[str, numpy.ndarray]`` (``coreprune.torch.to_numpy`` /
``load_numpy``); pruned entries are held at zero with ``coreprune.torch.attach_masks`` and shared
weights trained with ``coreprune.torch.attach_codebooks``. :mod:`.mxnet_backend` has the same verbs.

Parameter names and layouts (both frameworks)::

    lenet-300-100: fc1.weight (300, 784), fc2.weight (100, 300), fc3.weight (10, 100), + biases
    lenet-5:       conv1.weight (20, 1, 5, 5), conv2.weight (50, 20, 5, 5),
                   fc1.weight (500, 800), fc2.weight (10, 500), + biases

LeNet-5 is Caffe's variant: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500 + ReLU, fc 10
(no ReLU after the convolutions), on ``(N, 1, 28, 28)`` inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from coreprune.torch import (
    attach_codebooks,
    attach_masks,
    attached_codebooks,
    detach_codebooks,
    load_numpy,
    to_numpy,
)
from torch import nn
from torch.nn.utils import prune

from coreprune.weight_sharing import CodebookArray

__all__ = ["TorchBackend", "LeNet300100", "LeNet5"]


class LeNet300100(nn.Module):
    """784-300-100-10 with ReLU, on flattened ``(N, 784)`` images."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.reshape(len(x), -1))))))


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500 + ReLU, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x.reshape(len(x), 1, 28, 28)), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TorchBackend:
    """Training verbs of the recipe in PyTorch (CPU, float32).

    Examples
    --------
    >>> import numpy as np
    >>> b = TorchBackend()
    >>> net = b.build("lenet-5", seed=0)
    >>> b.error(net, np.zeros((3, 784), np.float32), np.zeros(3, np.int64)) >= 0
    True
    """

    name = "torch"

    def __init__(self, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))

    def build(self, model: str, seed: int) -> nn.Module:
        torch.manual_seed(int(seed))
        return LeNet300100() if model == "lenet-300-100" else LeNet5()

    def weights(self, net: nn.Module) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in to_numpy(net).items()}

    def load(self, net: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
        load_numpy(net, weights)

    def fit(
        self,
        net: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
        weight_decay: float = 0.0,
        masks: Mapping[str, np.ndarray] | None = None,
        codebooks: Mapping[str, CodebookArray] | None = None,
        on_batch: Callable[[], object] | None = None,
    ) -> dict[str, CodebookArray]:
        """Adam with cosine decay; masks keep pruned weights at zero, codebooks train only centroids.

        ``weight_decay`` is an L2 penalty added to the gradients (Adam's coupled form, the same as
        MXNet's ``wd``), applied to the weights and biases being trained.

        Returns the fine-tuned codebooks (empty without ``codebooks``); the net is left with plain
        parameters either way.
        """
        if masks:
            attach_masks(net, masks)
        if codebooks:
            attach_codebooks(net, codebooks)
        inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        steps = max(1, epochs * -(-len(labels) // batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        gen = torch.Generator().manual_seed(int(seed))
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(labels), generator=gen).split(batch_size):
                loss = F.cross_entropy(net(inputs[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if on_batch is not None:
                    on_batch()
        net.eval()
        out = attached_codebooks(net) if codebooks else {}
        if codebooks:
            detach_codebooks(net)
        if masks:
            for name in masks:
                path, _, attr = name.rpartition(".")
                prune.remove(net.get_submodule(path), attr)
        return out

    @torch.no_grad()
    def error(self, net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
        """Test error in percent."""
        net.eval()
        parts = np.array_split(x, max(1, len(x) // 2000))
        pred = torch.cat([net(torch.from_numpy(b)).argmax(1) for b in parts])
        return float(100.0 * (pred.numpy() != y).mean())
