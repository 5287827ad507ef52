"""The MXNet side of the end-to-end pipeline: build, train, fine-tune with masks, distil, evaluate, time.

:class:`MXNetBackend` implements :class:`coreprune_digits.pipeline.Backend` with the same verbs as
:class:`coreprune_digits.torch_train.TorchBackend`; :mod:`coreprune_digits.pipeline` holds the job itself.
Weights cross the boundary only as ``dict[str, numpy.ndarray]`` through :mod:`coreprune.mxnet`'s
``to_numpy`` / ``load_numpy``; masks are kept with ``attach_masks`` (zeroed gradients and a
forward pre-hook) and dropped with ``detach_masks`` after fine-tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import mxnet as mx
import numpy as np
from coreprune.mxnet import attach_masks, detach_masks, distill_student, load_numpy, to_numpy
from coreprune.mxnet.blocks import mobilenet_student, num_parameters, squeezenet_student
from mxnet import autograd, gluon

from .mxnet_models import lenet

__all__ = ["MXNetBackend"]


class MXNetBackend:
    """Training verbs of the pipeline in MXNet Gluon, on the CPU, float32, hybridized.

    Examples
    --------
    >>> import numpy as np
    >>> backend = MXNetBackend()
    >>> backend.seed(0)
    >>> net = backend.teacher()
    >>> backend.predict(net, np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """

    name = "mxnet"

    def seed(self, seed: int) -> None:
        """Seed MXNet's generator (initialisation); shuffling takes its own seed."""
        mx.random.seed(int(seed))

    def teacher(self) -> gluon.HybridBlock:
        """The source's LeNet (:func:`coreprune_digits.mxnet_models.lenet`), initialised and hybridized."""
        net = lenet(ctx=mx.cpu())
        net.hybridize()
        return net

    def student(self, kind: str, width: float, pool: int = 1) -> gluon.HybridBlock:
        """A MobileNet (``kind="mobilenet"``, width multiplier ``width``) or SqueezeNet student.

        With ``pool > 1`` the student sees its input average-pooled ``pool x pool`` (MobileNet's
        resolution multiplier ``rho = 1 / pool``): ``HybridSequential(AvgPool2D(pool), student)``,
        so it still takes the teacher's 28x28 batches and its parameters are named ``1.<name>``,
        as in PyTorch.
        """
        net = mobilenet_student(width) if kind == "mobilenet" else squeezenet_student()
        if pool > 1:
            wrapped = gluon.nn.HybridSequential()
            wrapped.add(gluon.nn.AvgPool2D(pool_size=pool, strides=pool), net)
            net = wrapped
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=mx.cpu())
        net(mx.nd.zeros((1, 1, 28, 28)))  # resolve deferred shapes before anything reads them
        net.hybridize()
        return net

    def num_parameters(self, model: gluon.Block) -> int:
        """Trainable scalars of ``model``."""
        return num_parameters(model)

    def weights(self, model: gluon.Block) -> dict[str, np.ndarray]:
        """A copy of the model's parameters under their structural names."""
        return to_numpy(model)

    def load(self, model: gluon.Block, weights: Mapping[str, np.ndarray]) -> None:
        """Write ``weights`` into ``model`` (strict: every name and shape must match)."""
        load_numpy(model, weights)

    def fit(
        self,
        model: gluon.HybridBlock,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
        masks: Mapping[str, np.ndarray] | None = None,
        on_epoch: Callable[[], object] | None = None,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[float]:
        """Train with softmax cross-entropy and Adam; with ``masks``, pruned entries stay exactly zero.

        Parameters
        ----------
        model : gluon.HybridBlock
            Trained in place.
        x : numpy.ndarray of float32, shape (n, 1, 28, 28)
        y : numpy.ndarray of int64, shape (n,)
        epochs, lr, batch_size, seed
            Passes over the data, Adam's learning rate, batch size, shuffling seed.
        masks : Mapping[str, numpy.ndarray], optional
            True = kept. Attached for the training and detached after it, leaving plain
            parameters whose pruned entries are 0.
        on_epoch : callable, optional
            Called without arguments after each epoch (a progress bar's tick).
        augment : callable, optional
            Maps each NumPy batch of inputs to an augmented one of the same shape before the
            forward pass (e.g. :func:`coreprune_digits.data.random_shift`).

        Returns
        -------
        list of float
            Mean training loss of each epoch.
        """
        if masks:
            attach_masks(model, masks)
        steps = epochs * -(-len(y) // batch_size)
        # Cosine decay to zero, as the PyTorch backend does.
        schedule = mx.lr_scheduler.CosineScheduler(max_update=steps, base_lr=lr, final_lr=0.0)
        trainer = gluon.Trainer(
            model.collect_params(), "adam", {"learning_rate": lr, "lr_scheduler": schedule}
        )
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        rng = np.random.default_rng(int(seed))
        history: list[float] = []
        for _ in range(epochs):
            total = 0.0
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch_size):
                idx = order[start : start + batch_size]
                data = mx.nd.array(x[idx] if augment is None else augment(x[idx]), dtype=np.float32)
                label = mx.nd.array(y[idx], dtype=np.float32)
                with autograd.record():
                    losses = loss_fn(model(data), label)
                losses.backward()
                trainer.step(len(idx))
                total += float(losses.sum().asscalar())
            history.append(total / len(y))
            if on_epoch is not None:
                on_epoch()
        if masks:
            detach_masks(model)
        return history

    def distil(
        self,
        student: gluon.HybridBlock,
        teacher: gluon.HybridBlock,
        x: np.ndarray,
        y: np.ndarray,
        *,
        temperature: float,
        alpha: float,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> list[float]:
        """Train ``student`` with :func:`coreprune.mxnet.kd_loss`; ``alpha=0`` is plain cross-entropy.

        Both arms of the KD comparison go through this one loop (same batches, Adam with the
        cosine schedule of :meth:`fit`, same epochs), so only the loss differs.
        """
        steps = epochs * -(-len(y) // batch_size)
        schedule = mx.lr_scheduler.CosineScheduler(max_update=steps, base_lr=lr, final_lr=0.0)
        trainer = gluon.Trainer(
            student.collect_params(), "adam", {"learning_rate": lr, "lr_scheduler": schedule}
        )
        return distill_student(
            student,
            teacher,
            (x, y),
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=trainer,
            seed=seed,
        )

    def predict(self, model: gluon.Block, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits ``(n, 10)`` float32 in inference mode (outside ``autograd.record``)."""
        parts = [model(mx.nd.array(x[i : i + batch_size])).asnumpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    def latency(self, model: gluon.Block, batch: np.ndarray, repeats: int) -> float:
        """Median seconds of one inference forward pass on ``batch``, after five warm-up passes."""
        inputs = mx.nd.array(batch)
        times = []
        for i in range(repeats + 5):
            start = time.perf_counter()
            model(inputs).wait_to_read()
            if i >= 5:
                times.append(time.perf_counter() - start)
        return float(np.median(times))
