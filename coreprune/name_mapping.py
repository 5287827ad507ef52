"""Rename tensors between MXNet Gluon and PyTorch conventions.

The two frameworks store the same layers with the same array layouts (a Gluon
``Dense`` weight is ``(units, in_units)`` like a torch ``Linear``; convolution
kernels are ``(out, in, *kernel)`` in both), so converting a checkpoint is a
matter of names only. This module computes the new names; it never touches
values.

Gluon to PyTorch (:func:`gluon_to_torch_names`)
-----------------------------------------------
1. ``arg:`` / ``aux:`` names (files written by ``HybridBlock.export``,
   ``mx.model.save_checkpoint`` and the Module API) are refused: they name symbol
   nodes (``arg:stage1_unit1_conv1_weight``, ``arg:conv0_weight``), which say
   nothing reliable about a module path -- mapped by position they would come out
   as plausible but wrong torch names. Load such a file into the Gluon network it
   came from and save that with ``save_parameters()``, whose structural names
   (``features.0.weight``) map one to one.
2. The parameter (the last part of the name) is renamed:
   ``gamma`` -> ``weight``, ``beta`` -> ``bias``,
   ``moving_mean`` / ``running_mean`` -> ``running_mean``,
   ``moving_var`` / ``running_var`` -> ``running_var``; anything else is kept.
3. Structural names, which contain a dot (``"1.gamma"``, ``"features.3.weight"``;
   what ``Block.save_parameters`` writes since MXNet 1.3), keep their path: it
   is already the attribute path a torch module of the same structure uses.
4. Legacy prefixed names (``"hybridsequential0_dense1_weight"``; written by
   ``save_params``, ``export`` and the symbol API) are split at ``_`` into block
   names. A first block name shared by every legacy name (the root block, such as
   ``hybridsequential0``) is dropped, and each remaining block name is replaced
   by its position among its siblings, counted in order of first appearance:
   ``seq0_dense0_weight, seq0_dense0_bias, seq0_dense1_weight`` become
   ``0.weight, 0.bias, 1.weight``, and a lone ``dense0_weight`` becomes ``weight``.
   Only blocks that own parameters are counted, so where parameter-free layers
   (activations, pooling) sit between them in a torch ``nn.Sequential``, the
   torch indices are larger: prefer structural names when you can.

PyTorch's ``BatchNorm`` also keeps a ``num_batches_tracked`` counter, which a strict
``load_state_dict`` expects; :func:`torch_batch_norm_counters` names the counters a
converted Gluon file lacks (``coreprune convert --map gluon-to-torch`` adds them as 0).

PyTorch to Gluon (:func:`torch_to_gluon_names`)
-----------------------------------------------
Paths are kept (Gluon's structural names are attribute paths too). A module that
has a ``running_mean`` is a batch norm: its ``weight`` / ``bias`` become
``gamma`` / ``beta``. ``num_batches_tracked`` has no Gluon counterpart and is
left out of the mapping (the caller reports it as dropped). Layer norms have no
running statistics, so their ``weight`` / ``bias`` cannot be told from a linear
layer's and are kept.

Both functions raise :class:`~coreprune.errors.CompressionError` when two names
would map to the same new name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import CompressionError

__all__ = [
    "gluon_to_torch_names", "torch_to_gluon_names", "torch_batch_norm_counters", "MAPPINGS",
    "WRAPPER_PREFIXES", "strip_wrapper_prefixes", "align_wrapper_prefixes",
]

#: Name prefixes that PyTorch wrappers add to every ``state_dict`` name: ``module.``
#: (``nn.DataParallel``, ``DistributedDataParallel``) and ``_orig_mod.`` (``torch.compile``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def strip_wrapper_prefixes(names: Iterable[str]) -> dict[str, str]:
    """``name -> name`` without its leading wrapper prefixes (``module.``, ``_orig_mod.``, repeated).

    Use it to save a checkpoint of a wrapped model under the plain model's names:
    ``{m[k]: v for k, v in weights.items()}`` with ``m = strip_wrapper_prefixes(weights)``.

    Raises
    ------
    CompressionError
        Two names that become the same.

    Examples
    --------
    >>> strip_wrapper_prefixes(["module._orig_mod.fc.weight", "module.fc.bias"])
    {'module._orig_mod.fc.weight': 'fc.weight', 'module.fc.bias': 'fc.bias'}
    """
    return _check_unique({name: _strip(name) for name in names}, "stripping wrapper prefixes")


def align_wrapper_prefixes(given: Iterable[str], target: Iterable[str]) -> dict[str, str]:
    """Map each ``given`` name to the ``target`` name that differs from it only by wrapper prefixes.

    Names already in ``target`` map to themselves; a name matching no target name (or several)
    maps to itself, for the caller to report as unexpected. So a checkpoint of a
    ``DataParallel`` or ``torch.compile`` model loads into the plain model and the other way round.

    Examples
    --------
    >>> align_wrapper_prefixes(["module.fc.weight"], ["_orig_mod.fc.weight", "_orig_mod.fc.bias"])
    {'module.fc.weight': '_orig_mod.fc.weight'}
    """
    target = list(target)
    exact = set(target)
    by_plain: dict[str, list[str]] = {}
    for name in target:
        by_plain.setdefault(_strip(name), []).append(name)
    out = {}
    for name in given:
        if name in exact:
            out[name] = name
            continue
        found = by_plain.get(_strip(name), [])
        out[name] = found[0] if len(found) == 1 else name
    return out

_GLUON_TO_TORCH_LEAF = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "running_mean": "running_mean",
    "moving_var": "running_var",
    "running_var": "running_var",
}
# Longest first, so that "running_mean" wins over a hypothetical "mean".
_LEGACY_SUFFIXES = sorted(
    ["weight", "bias", "gamma", "beta", "moving_mean", "moving_var", "running_mean", "running_var"],
    key=len,
    reverse=True,
)


def _check_unique(mapping: dict[str, str], direction: str) -> dict[str, str]:
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        if new in seen:
            raise CompressionError(
                f"{direction}: {seen[new]!r} and {old!r} would both be renamed to {new!r}; "
                "rename one of them first"
            )
        seen[new] = old
    return mapping


def _split_legacy(name: str) -> tuple[list[str], str]:
    """``"seq0_dense1_weight"`` -> (["seq0", "dense1"], "weight"); a bare ``"weight"`` -> ([], "weight")."""
    for suffix in _LEGACY_SUFFIXES:
        if name == suffix:
            return [], suffix
        if name.endswith("_" + suffix):
            prefix = name[: -len(suffix) - 1]
            return [p for p in prefix.split("_") if p], suffix
    head, _, leaf = name.rpartition("_")
    return ([p for p in head.split("_") if p], leaf) if head else ([], name)


def gluon_to_torch_names(names: Iterable[str]) -> dict[str, str]:
    """Map MXNet Gluon parameter names to PyTorch ``state_dict`` names.

    Parameters
    ----------
    names : iterable of str
        The names in a Gluon ``.params`` file, in file order (the order numbers
        legacy layer names).

    Returns
    -------
    dict of str to str
        Old name -> new name, for every input name, in input order.

    Raises
    ------
    CompressionError
        Two names map to the same new name; ``arg:`` / ``aux:`` (symbol API, ``export``) names.

    Examples
    --------
    >>> gluon_to_torch_names(["0.weight", "1.gamma", "1.beta", "1.running_mean", "1.running_var"])
    {'0.weight': '0.weight', '1.gamma': '1.weight', '1.beta': '1.bias', '1.running_mean': '1.running_mean', \
'1.running_var': '1.running_var'}
    >>> gluon_to_torch_names(["net0_dense0_weight", "net0_dense0_bias", "net0_bn0_running_var"])
    {'net0_dense0_weight': '0.weight', 'net0_dense0_bias': '0.bias', 'net0_bn0_running_var': '1.running_var'}
    """
    names = list(names)
    symbolic = [n for n in names if n.startswith(("arg:", "aux:"))]
    if symbolic:
        raise CompressionError(
            f"gluon-to-torch: {symbolic[0]!r} ({len(symbolic)} such name(s)) is a symbol-API name, as "
            "HybridBlock.export and save_checkpoint write them: it names a symbol node, not a module path, "
            "so no PyTorch name follows from it. Load the file into the Gluon network it came from "
            "(net.collect_params().load(path, ignore_extra=True) or SymbolBlock.imports), save that network "
            "with net.save_parameters(path), and convert the result"
        )
    stripped = {n: n[4:] if n.startswith(("arg:", "aux:")) else n for n in names}
    legacy = {n: _split_legacy(s) for n, s in stripped.items() if "." not in s}
    # The root block's name (shared first component) says nothing a torch path would.
    firsts = {parts[0] for parts, _ in legacy.values() if parts}
    drop_root = len(firsts) == 1 and all(parts for parts, _ in legacy.values())
    # A tree of block names: each node maps a child's name to (its index among its siblings, its node).
    # Walking it costs one step per name part, so many long names map in linear time (keying a table
    # by every prefix tuple would cost the square of the depth per name).
    root: dict[str, tuple[int, dict]] = {}
    out: dict[str, str] = {}
    for n in names:
        s = stripped[n]
        if n not in legacy:
            path, _, leaf = s.rpartition(".")
            out[n] = f"{path}.{_GLUON_TO_TORCH_LEAF.get(leaf, leaf)}"
            continue
        parts, leaf = legacy[n]
        if drop_root:
            parts = parts[1:]
        indices: list[str] = []
        node = root
        for part in parts:
            entry = node.get(part)
            if entry is None:
                entry = node[part] = (len(node), {})
            indices.append(str(entry[0]))
            node = entry[1]
        out[n] = ".".join([*indices, _GLUON_TO_TORCH_LEAF.get(leaf, leaf)])
    return _check_unique(out, "gluon-to-torch")


def torch_to_gluon_names(names: Iterable[str]) -> dict[str, str]:
    """Map PyTorch ``state_dict`` names to MXNet Gluon structural parameter names.

    Parameters
    ----------
    names : iterable of str

    Returns
    -------
    dict of str to str
        Old name -> new name, in input order. ``*.num_batches_tracked`` names are
        absent: Gluon has no such parameter.

    Raises
    ------
    CompressionError
        Two names map to the same new name.

    Examples
    --------
    >>> torch_to_gluon_names(["0.weight", "1.weight", "1.bias", "1.running_mean", "1.num_batches_tracked"])
    {'0.weight': '0.weight', '1.weight': '1.gamma', '1.bias': '1.beta', '1.running_mean': '1.running_mean'}
    """
    names = list(names)
    batch_norms = {n.rpartition(".")[0] for n in names if n.rpartition(".")[2] == "running_mean"}
    out: dict[str, str] = {}
    for n in names:
        path, dot, leaf = n.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if path in batch_norms and leaf in ("weight", "bias"):
            leaf = "gamma" if leaf == "weight" else "beta"
        out[n] = f"{path}{dot}{leaf}"
    return _check_unique(out, "torch-to-gluon")


def torch_batch_norm_counters(names: Iterable[str]) -> dict[str, str]:
    """The ``num_batches_tracked`` counters PyTorch batch norms have and ``names`` lack.

    A module with a ``running_var`` is a batch norm; torch's ``BatchNorm`` registers
    ``num_batches_tracked`` (an int64 scalar) right after it.

    Parameters
    ----------
    names : iterable of str
        PyTorch ``state_dict`` names (e.g. the output of :func:`gluon_to_torch_names`).

    Returns
    -------
    dict of str to str
        Missing counter name -> the existing name it belongs after, in input order.

    Examples
    --------
    >>> torch_batch_norm_counters(["0.weight", "1.weight", "1.running_mean", "1.running_var", "2.weight"])
    {'1.num_batches_tracked': '1.running_var'}
    """
    names = list(names)
    present = set(names)
    out: dict[str, str] = {}
    for n in names:
        path, dot, leaf = n.rpartition(".")
        counter = f"{path}{dot}num_batches_tracked"
        if leaf == "running_var" and counter not in present:
            out[counter] = n
    return out


#: ``--map`` choices of ``coreprune convert``: name -> function(names) -> {old: new}
MAPPINGS: dict[str, Callable[[Iterable[str]], dict[str, str]]] = {
    "gluon-to-torch": gluon_to_torch_names,
    "torch-to-gluon": torch_to_gluon_names,
}
