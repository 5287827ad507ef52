"""The PyTorch side of the end-to-end pipeline: build, train, fine-tune with masks, distil, evaluate, time.

:class:`TorchBackend` implements :class:`coreprune_digits.pipeline.Backend`; :mod:`coreprune_digits.pipeline`
holds the job itself (framework-free) and :mod:`coreprune_digits.mxnet_train` the same verbs in Gluon.
Weights cross the boundary only as ``dict[str, numpy.ndarray]`` through :mod:`coreprune.torch`'s
``to_numpy`` / ``load_numpy``; masks are kept with ``attach_masks`` (PyTorch's own
``custom_from_mask`` parametrisation) and made permanent with ``detach_masks`` after fine-tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from coreprune.torch import attach_masks, detach_masks, distill_student, load_numpy, to_numpy
from coreprune.torch.blocks import mobilenet_student, num_parameters, squeezenet_student
from torch import nn

from .torch_models import lenet

__all__ = ["TorchBackend"]


class TorchBackend:
    """Training verbs of the pipeline in PyTorch, on the CPU, float32.

    Examples
    --------
    >>> import numpy as np
    >>> backend = TorchBackend()
    >>> backend.seed(0)
    >>> net = backend.teacher()
    >>> backend.predict(net, np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """

    name = "torch"

    def seed(self, seed: int) -> None:
        """Seed PyTorch's generator (initialisation); shuffling takes its own seed."""
        torch.manual_seed(int(seed))

    def teacher(self) -> nn.Module:
        """The source's LeNet (:func:`coreprune_digits.torch_models.lenet`)."""
        return lenet()

    def student(self, kind: str, width: float, pool: int = 1) -> nn.Module:
        """A MobileNet (``kind="mobilenet"``, width multiplier ``width``) or SqueezeNet student.

        With ``pool > 1`` the student sees its input average-pooled ``pool x pool`` (MobileNet's
        resolution multiplier ``rho = 1 / pool``): ``Sequential(AvgPool2d(pool), student)``, so
        it still takes the teacher's 28x28 batches and its parameters are named ``1.<name>``.
        """
        net = mobilenet_student(width) if kind == "mobilenet" else squeezenet_student()
        return nn.Sequential(nn.AvgPool2d(pool), net) if pool > 1 else net

    def num_parameters(self, model: nn.Module) -> int:
        """Trainable scalars of ``model``."""
        return num_parameters(model)

    def weights(self, model: nn.Module) -> dict[str, np.ndarray]:
        """A copy of the model's state (effective weights when masks are attached)."""
        return to_numpy(model)

    def load(self, model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
        """Write ``weights`` into ``model`` (strict: every name and shape must match)."""
        load_numpy(model, weights)

    def fit(
        self,
        model: nn.Module,
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
        """Train with cross-entropy and Adam; with ``masks``, pruned entries stay exactly zero.

        Parameters
        ----------
        model : torch.nn.Module
            Trained in place.
        x : numpy.ndarray of float32, shape (n, 1, 28, 28)
        y : numpy.ndarray of int64, shape (n,)
        epochs, lr, batch_size, seed
            Passes over the data, Adam's learning rate, batch size, shuffling seed.
        masks : Mapping[str, numpy.ndarray], optional
            True = kept. Attached for the training and removed after it (``detach_masks``),
            leaving plain parameters whose pruned entries are 0.
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
        inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        # Cosine decay to zero: the last epochs settle instead of bouncing at the full rate.
        steps = epochs * -(-len(labels) // batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        generator = torch.Generator().manual_seed(int(seed))
        history: list[float] = []
        model.train()
        for _ in range(epochs):
            total = 0.0
            for idx in torch.randperm(len(labels), generator=generator).split(batch_size):
                batch = inputs[idx] if augment is None else torch.from_numpy(augment(x[idx.numpy()]))
                loss = F.cross_entropy(model(batch), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
            history.append(total / len(labels))
            if on_epoch is not None:
                on_epoch()
        model.eval()
        if masks:
            detach_masks(model)
        return history

    def distil(
        self,
        student: nn.Module,
        teacher: nn.Module,
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
        """Train ``student`` with :func:`coreprune.torch.kd_loss`; ``alpha=0`` is plain cross-entropy.

        Both arms of the KD comparison go through this one loop (same batches, Adam with the
        cosine schedule of :meth:`fit`, same epochs), so only the loss differs.
        """
        optimizer = torch.optim.Adam(student.parameters(), lr=lr)
        steps = epochs * -(-len(y) // batch_size)
        history = distill_student(
            student,
            teacher,
            (x, y),
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
            seed=seed,
        )
        student.eval()
        return history

    def predict(self, model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits ``(n, 10)`` float32 in inference mode."""
        model.eval()
        with torch.inference_mode():
            parts = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return torch.cat(parts).numpy()

    def latency(self, model: nn.Module, batch: np.ndarray, repeats: int) -> float:
        """Median seconds of one inference forward pass on ``batch``, after five warm-up passes."""
        model.eval()
        inputs = torch.from_numpy(batch)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 5):
                start = time.perf_counter()
                model(inputs)
                if i >= 5:
                    times.append(time.perf_counter() - start)
        return float(np.median(times))
