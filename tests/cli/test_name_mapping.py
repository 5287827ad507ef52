"""Gluon <-> PyTorch name mapping: the documented rules, collisions, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreprune import CompressionError
from coreprune.name_mapping import MAPPINGS, gluon_to_torch_names, torch_to_gluon_names


def test_structural_gluon_names_keep_their_path_and_rename_the_parameter():
    names = ["features.0.weight", "features.0.bias", "features.1.gamma", "features.1.beta",
             "features.1.running_mean", "features.1.running_var", "output.weight"]
    assert list(gluon_to_torch_names(names).values()) == [
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.1.running_mean", "features.1.running_var", "output.weight"]


def test_export_and_symbol_names_are_refused_with_what_to_do():
    names = ["arg:resnet0_conv0_weight", "arg:resnet0_bn0_gamma", "aux:resnet0_bn0_moving_mean",
             "arg:stage1_unit1_conv1_weight"]
    with pytest.raises(CompressionError, match=r"'arg:resnet0_conv0_weight' \(4 such name\(s\)\) is a "
                       r"symbol-API name.*save_parameters"):
        gluon_to_torch_names(names)


def test_legacy_names_number_nested_blocks_among_their_siblings():
    names = ["resnet0_conv0_weight", "resnet0_bn0_gamma", "resnet0_bn0_moving_mean",
             "resnet0_stage1_conv0_weight", "resnet0_stage1_conv1_weight", "resnet0_dense0_weight"]
    assert list(gluon_to_torch_names(names).values()) == [
        "0.weight", "1.weight", "1.running_mean", "2.0.weight", "2.1.weight", "3.weight"]


def test_legacy_names_without_a_shared_root_number_from_the_top():
    assert gluon_to_torch_names(["dense0_weight", "dense0_bias", "dense1_weight"]) == {
        "dense0_weight": "0.weight", "dense0_bias": "0.bias", "dense1_weight": "1.weight"}
    assert gluon_to_torch_names(["dense0_weight", "dense0_bias"]) == {
        "dense0_weight": "weight", "dense0_bias": "bias"}  # a lone block is the root itself


def test_torch_to_gluon_renames_only_batch_norm_affine_parameters():
    names = ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
             "bn.num_batches_tracked", "ln.weight", "ln.bias"]
    assert torch_to_gluon_names(names) == {
        "conv.weight": "conv.weight", "conv.bias": "conv.bias", "bn.weight": "bn.gamma", "bn.bias": "bn.beta",
        "bn.running_mean": "bn.running_mean", "bn.running_var": "bn.running_var",
        "ln.weight": "ln.weight", "ln.bias": "ln.bias"}


def test_collisions_raise_naming_both_sources():
    with pytest.raises(CompressionError, match="'a.gamma' and 'a.weight' would both be renamed to 'a.wei"):
        gluon_to_torch_names(["a.gamma", "a.weight"])


segment = st.sampled_from(["features", "body", "0", "1", "2", "3", "head"])
leaf = st.sampled_from(["weight", "bias", "gamma", "beta", "running_mean", "running_var"])


@given(st.lists(st.tuples(st.lists(segment, min_size=1, max_size=3), leaf), min_size=1, max_size=12))
def test_structural_names_survive_gluon_to_torch_to_gluon(entries):
    names = list(dict.fromkeys(".".join([*path, lf]) for path, lf in entries))
    split = [n.rpartition(".") for n in names]
    # a well-formed Gluon net: a batch norm (gamma/beta/running stats) has no weight/bias and has running_mean
    bn = {m for m, _, lf in split if lf in ("gamma", "beta", "running_mean", "running_var")}
    names = [m + "." + lf for m, _, lf in split if not (m in bn and lf in ("weight", "bias"))]
    names += [f"{m}.running_mean" for m in sorted(bn) if f"{m}.running_mean" not in names]
    to_torch = gluon_to_torch_names(names)
    back = torch_to_gluon_names(list(to_torch.values()))
    assert [back[to_torch[n]] for n in names] == names
    assert set(MAPPINGS) == {"gluon-to-torch", "torch-to-gluon"}


def test_many_long_legacy_names_map_without_a_hang():
    """Issue 11, class 7: keying siblings by every prefix tuple made each name cost depth**2.

    20,000-part names took minutes that way; walking a tree of block names takes well under a
    second. Run in a child with a timeout so that a regression fails instead of hanging the suite.
    """
    import subprocess
    import sys

    code = (
        "from coreprune.name_mapping import gluon_to_torch_names\n"
        "names = ['net0_' + '_'.join(f'b{i}' for i in range(20000)) + f'_x{j}_weight' for j in range(5)]\n"
        "out = gluon_to_torch_names(names)\n"
        "print(out[names[4]].count('.'), out[names[4]][-12:])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20001", "0.0.4.weight"]
