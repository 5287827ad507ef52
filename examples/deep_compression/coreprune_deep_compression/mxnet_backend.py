"""The MXNet Gluon side of the recipe: the same models, names and verbs as :mod:`.torch_backend`.

Masks are held with ``coreprune.mxnet.attach_masks`` (gradient mask plus forward pre-hook) and shared
weights trained with ``coreprune.mxnet.attach_codebooks`` (the centroids are what the ``Trainer``
updates). Parameter names and layouts equal the PyTorch models', so one ``dict[str, numpy.ndarray]``
loads into both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import mxnet as mx
import numpy as np
from coreprune.mxnet import (
    attach_codebooks,
    attach_masks,
    attached_codebooks,
    detach_codebooks,
    detach_masks,
    load_numpy,
    to_numpy,
)
from coreprune.mxnet.codebook import centroid_params
from mxnet import autograd, gluon

from coreprune.weight_sharing import CodebookArray

__all__ = ["MXNetBackend", "LeNet300100", "LeNet5"]


class LeNet300100(gluon.HybridBlock):
    """784-300-100-10 with ReLU, on flattened ``(N, 784)`` images."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.fc1 = gluon.nn.Dense(300, in_units=784, activation="relu")
            self.fc2 = gluon.nn.Dense(100, in_units=300, activation="relu")
            self.fc3 = gluon.nn.Dense(10, in_units=100)

    def hybrid_forward(self, F, x):  # noqa: N803 - Gluon's signature
        return self.fc3(self.fc2(self.fc1(x)))


class LeNet5(gluon.HybridBlock):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500 + ReLU, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.conv1 = gluon.nn.Conv2D(20, 5, in_channels=1)
            self.conv2 = gluon.nn.Conv2D(50, 5, in_channels=20)
            self.fc1 = gluon.nn.Dense(500, in_units=800, activation="relu")
            self.fc2 = gluon.nn.Dense(10, in_units=500)

    def hybrid_forward(self, F, x):  # noqa: N803 - Gluon's signature
        x = F.reshape(x, (-1, 1, 28, 28))
        x = F.Pooling(self.conv1(x), kernel=(2, 2), stride=(2, 2), pool_type="max")
        x = F.Pooling(self.conv2(x), kernel=(2, 2), stride=(2, 2), pool_type="max")
        return self.fc2(self.fc1(x))


class MXNetBackend:
    """Training verbs of the recipe in MXNet (CPU, float32).

    Examples
    --------
    >>> import numpy as np
    >>> b = MXNetBackend()
    >>> net = b.build("lenet-300-100", seed=0)
    >>> sorted(b.weights(net))[:2]
    ['fc1.bias', 'fc1.weight']
    """

    name = "mxnet"

    def __init__(self, threads: int | None = None) -> None:
        # OpenMP threads are fixed when libmxnet loads (OMP_NUM_THREADS, which the recipe sets before
        # importing this module); the engine's CPU workers default to one per device already
        self.threads = threads

    def build(self, model: str, seed: int) -> gluon.HybridBlock:
        mx.random.seed(int(seed))
        net = LeNet300100() if model == "lenet-300-100" else LeNet5()
        net.initialize(mx.init.Xavier())
        net.hybridize()
        return net

    def weights(self, net: gluon.Block) -> dict[str, np.ndarray]:
        return to_numpy(net)

    def load(self, net: gluon.Block, weights: Mapping[str, np.ndarray]) -> None:
        load_numpy(net, weights)

    def fit(
        self,
        net: gluon.Block,
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

        ``weight_decay`` is Adam's ``wd``: an L2 penalty added to the gradients, as in
        :mod:`.torch_backend`.
        """
        if masks:
            attach_masks(net, masks)
        params = dict(net._collect_params_with_prefix())
        if codebooks:
            attach_codebooks(net, codebooks)
            trainable = {k: p for k, p in params.items() if k not in codebooks}
            trainable.update({f"{k}_centroids": p for k, p in centroid_params(net).items()})
        else:
            trainable = params
        n = len(y)
        steps = max(1, epochs * -(-n // batch_size))
        sched = mx.lr_scheduler.CosineScheduler(max_update=steps, base_lr=lr, final_lr=0.0)
        options = {"learning_rate": lr, "lr_scheduler": sched, "wd": weight_decay}
        trainer = gluon.Trainer(list(trainable.values()), "adam", options)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        rng = np.random.default_rng(int(seed))
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                xb, yb = mx.nd.array(x[idx]), mx.nd.array(y[idx])
                with autograd.record():
                    loss = loss_fn(net(xb), yb).mean()
                loss.backward()
                trainer.step(1)
                if on_batch is not None:
                    on_batch()
        out = attached_codebooks(net) if codebooks else {}
        if codebooks:
            detach_codebooks(net)
        if masks:
            detach_masks(net)
        return out

    def error(self, net: gluon.Block, x: np.ndarray, y: np.ndarray) -> float:
        """Test error in percent."""
        pred = np.concatenate([net(mx.nd.array(b)).argmax(axis=1).asnumpy()
                               for b in np.array_split(x, max(1, len(x) // 2000))])
        return float(100.0 * (pred.astype(np.int64) != y).mean())
