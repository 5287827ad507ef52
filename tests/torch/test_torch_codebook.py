"""Centroid fine-tuning in PyTorch: gradients summed per cluster, masks kept, codebooks read back."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

from coreprune.torch import (  # noqa: E402
    attach_codebooks,
    attach_masks,
    attached_codebooks,
    detach_codebooks,
    to_numpy,
)

from coreprune import CompressionError, prune_magnitude  # noqa: E402
from coreprune.weight_sharing import centroid_gradients, share_weights  # noqa: E402


def _lenet5():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5), torch.nn.MaxPool2d(2), torch.nn.Conv2d(20, 50, 5), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(800, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10),
    )


def _shared_net(seed=0, sparsity=0.9):
    torch.manual_seed(seed)
    net = _lenet5()
    pruned, masks = prune_magnitude(to_numpy(net), sparsity)
    shared = share_weights(pruned, {"0.weight": 8, "2.weight": 8, "5.weight": 5, "7.weight": 5}, masks=masks)
    net_dense = _lenet5()
    net_dense.load_state_dict({k: torch.tensor(v) for k, v in pruned.items()})
    attach_codebooks(net_dense, {k: v for k, v in shared.items() if k.endswith("weight")})
    return net_dense, shared, masks


def test_forward_uses_the_shared_weights_and_grads_sum_per_cluster():
    net, shared, _ = _shared_net()
    x = torch.randn(4, 1, 28, 28)
    for name in ("5.weight", "7.weight"):
        sub = net.get_submodule(name.split(".")[0])
        np.testing.assert_array_equal(sub.weight.detach().numpy(), shared[name].dequantize())
    # dL/dW through a plain copy of the weights, then the core's rule, against autograd on the centroids
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([1, 2, 3, 4]))
    loss.backward()
    plain = _lenet5()
    plain.load_state_dict({k: torch.tensor(v.dequantize() if hasattr(v, "dequantize") else v)
                           for k, v in shared.items()})
    torch.nn.functional.cross_entropy(plain(x), torch.tensor([1, 2, 3, 4])).backward()
    for name in ("0.weight", "2.weight", "5.weight", "7.weight"):
        sub_idx = name.split(".")[0]
        expected = centroid_gradients(plain.get_submodule(sub_idx).weight.grad.numpy(), shared[name])
        got = net.get_submodule(sub_idx).weight_centroids.grad.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_centroid_gradient_matches_finite_differences():
    torch.manual_seed(1)
    layer = torch.nn.Linear(30, 20).double()
    w = layer.weight.detach().numpy().copy()
    w[np.abs(w) < 0.05] = 0
    shared = share_weights({"weight": w}, 3)
    attach_codebooks(layer, {"weight": shared["weight"]})
    x = torch.randn(8, 30, dtype=torch.float64)

    def loss():
        return torch.sin(layer(x)).sum()

    loss().backward()
    analytic = layer.weight_centroids.grad.numpy().copy()
    eps = 1e-6
    numeric = []
    with torch.no_grad():
        for j in range(8):
            layer.weight_centroids[j] += eps
            up = loss().item()
            layer.weight_centroids[j] -= 2 * eps
            down = loss().item()
            layer.weight_centroids[j] += eps
            numeric.append((up - down) / (2 * eps))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_masks_and_codebook_size_survive_training():
    net, shared, masks = _shared_net(seed=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        loss = net(torch.randn(8, 1, 28, 28)).square().mean()
        loss.backward()
        opt.step()
    books = attached_codebooks(net)
    assert set(books) == {"0.weight", "2.weight", "5.weight", "7.weight"}
    for name, book in books.items():
        np.testing.assert_array_equal(book.codes, shared[name].codes)
        assert book.codebook.size == shared[name].codebook.size
        assert not np.array_equal(book.codebook, shared[name].codebook)  # the centroids moved
        values = book.dequantize()
        assert np.all(values[~masks[name]] == 0)
        assert len(np.unique(values[masks[name]])) <= book.codebook.size
    detach_codebooks(net)
    after = to_numpy(net)
    for name, book in books.items():
        np.testing.assert_array_equal(after[name], book.dequantize())


def test_refuses_pruned_parameters_and_bad_values():
    layer = torch.nn.Linear(4, 4)
    w = layer.weight.detach().numpy()
    book = share_weights({"weight": w}, 2)["weight"]
    attach_masks(layer, {"weight": np.abs(w) > 0.1})
    with pytest.raises(CompressionError, match="prune.remove"):
        attach_codebooks(layer, {"weight": book})
    with pytest.raises(CompressionError):
        attach_codebooks(torch.nn.Linear(4, 4), {"weight": w})
    with pytest.raises(CompressionError):
        attach_codebooks(torch.nn.Linear(4, 5), {"weight": book})
    with pytest.raises(CompressionError):
        attach_codebooks(torch.nn.Linear(4, 4), {"nope.weight": book})
