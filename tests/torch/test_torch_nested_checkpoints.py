"""Nested training checkpoints through the CLI: the structure and the non-tensor entries round-trip.

A checkpoint as training scripts save it -- ``{"state_dict": model.state_dict(), "epoch": ...,
"optimizer": adam.state_dict(), "scheduler": sched.state_dict(), ...}`` -- goes through
``coreprune compress`` + ``decompress`` and ``coreprune prune``; ``torch.load(weights_only=True)``
of the result must have the same nesting and entries, the model weights pruned as torch's
L1Unstructured prunes them, everything else bit for bit, and load back into a fresh model,
optimizer and scheduler.
"""

from __future__ import annotations

import collections

import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
prune = pytest.importorskip("torch.nn.utils.prune", reason="needs torch.nn.utils.prune")

import coreprune.io as cio  # noqa: E402
from coreprune.cli import main  # noqa: E402


def _model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5),
    )


def _checkpoint():
    torch.manual_seed(0)
    net = _model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.99))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):  # real Adam state: step, exp_avg, exp_avg_sq per parameter
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        sched.step()
    return net, opt, sched, {
        "state_dict": net.state_dict(), "epoch": 3, "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "best_loss": float("inf"), "arch": "cnn-small",
        "history": [0.9, 0.5, 0.25], "notes": None, "shape": (3, 8, 8),
    }


def _same_tree(a, b, where=""):
    """Same containers (types included), keys, values; tensors compared by the caller."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tree(x, y, f"{where}.{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, (where, a, b)


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("route", ["compress-decompress", "prune"])
def test_nested_checkpoint_round_trips_structure_and_extras(tmp_path, capsys, route):
    net, opt, sched, ck = _checkpoint()
    src, out = tmp_path / "ck.pt", tmp_path / "out.pt"
    torch.save(ck, src)
    if route == "prune":
        code, io_ = _run(capsys, "prune", src, "-o", out, "--sparsity", "0.5")
        assert code == 0, io_.err
    else:
        cpz = tmp_path / "ck.cpz"
        code, io_ = _run(capsys, "compress", src, "-o", cpz, "--sparsity", "0.5")
        assert code == 0, io_.err
        with cio.open_weights(src) as a, cio.open_weights(cpz) as b:
            assert b.structure == a.structure and b.extras == a.extras and b.extras["epoch"] == 3
        code, io_ = _run(capsys, "decompress", cpz, "-o", out)
        assert code == 0, io_.err
    assert "non-tensor" not in io_.err and "nesting" not in io_.err, io_.err
    back = torch.load(out, weights_only=True)
    _same_tree(ck, back)
    assert type(back["state_dict"]) is collections.OrderedDict and type(back["optimizer"]["state"]) is dict
    assert list(back["optimizer"]["state"]) == [0, 1, 2, 3, 4, 5, 6, 7]  # integer keys stay integers
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    pruned = []
    for (name, before), (name2, after) in zip(_tensors(ck), _tensors(back)):
        assert name == name2
        if name.startswith("state_dict.") and name.endswith("weight") and before.dim() >= 2:
            # the selected weights: the mask torch's L1Unstructured computes for 50%
            mask = prune.L1Unstructured(0.5).compute_mask(before, torch.ones_like(before)).bool()
            assert torch.equal(after != 0, mask), name
            assert torch.equal(after[mask], before[mask]), name
            pruned.append(name)
        else:  # biases, BatchNorm statistics and the whole optimizer state: untouched, bit for bit
            assert torch.equal(after, before), name
    assert pruned == ["state_dict.0.weight", "state_dict.4.weight", "state_dict.6.weight"]
    # and it loads back where it came from
    net2 = _model()
    net2.load_state_dict(back["state_dict"])
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=9)
    sched2.load_state_dict(back["scheduler"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.step_size == 2
    assert torch.equal(opt2.state[net2[4].weight]["exp_avg"], opt.state[net[4].weight]["exp_avg"])


def test_legacy_nested_checkpoint_and_flat_outputs(tmp_path, capsys):
    *_, ck = _checkpoint()
    src = tmp_path / "old.pth"
    torch.save(ck, src, _use_new_zipfile_serialization=False)
    out, flat = tmp_path / "new.pt", tmp_path / "flat.safetensors"
    code, io_ = _run(capsys, "prune", src, "-o", out, "--sparsity", "0.3")
    assert code == 0, io_.err
    back = torch.load(out, weights_only=True)
    _same_tree(ck, back)
    assert back["epoch"] == 3 and back["scheduler"] == ck["scheduler"]
    # a format without a place for them still says what it drops
    code, io_ = _run(capsys, "convert", src, flat)
    assert code == 0 and "non-tensor value(s)" in io_.err and "nesting of" in io_.err, io_.err


def test_entries_that_cannot_be_written_back_are_refused(tmp_path, capsys):
    net = _model()
    src = tmp_path / "ck.pt"
    torch.save({"state_dict": net.state_dict(), "blob": b"\x00\x01", "tags": {"a", "b"}}, src)
    for out in (tmp_path / "o.pt", tmp_path / "o.cpz"):
        code, io_ = _run(capsys, "compress" if out.suffix == ".cpz" else "prune", src, "-o", out,
                         "--sparsity", "0.5")
        assert code == 2 and io_.err.count("\n") == 1, io_.err
        assert "checkpoint entry 'blob' is a bytes value" in io_.err and not out.exists()
    code, io_ = _run(capsys, "prune", src, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5")
    assert code == 0 and "not written: blob, tags" in io_.err, io_.err
