"""The nesting of a checkpoint: where each tensor and each other value sits, as JSON-ready nodes.

A ``torch.save`` checkpoint such as ``{"state_dict": sd, "epoch": 3, "optimizer": opt.state_dict()}``
is read as flat dotted tensor names plus ``extras`` (:mod:`coreprune.io.torch_format`). Its
*structure* records the rest, so that a writer can rebuild the same object around the processed
tensors. A structure is a tree of nodes made of JSON values only (a ``.cpz`` manifest stores it as
is):

=================================  ====================================================
node                               stands for
=================================  ====================================================
``{"tensor": name}``               the tensor served under ``name``
``{"dict": [[key, node], ...]}``   a ``dict`` (keys: str, int, finite float, bool, None)
``{"odict": [[key, node], ...]}``  a ``collections.OrderedDict``
``{"list": [node, ...]}``          a ``list``
``{"tuple": [node, ...]}``         a ``tuple``
``{"float": "inf"}``               ``inf``, ``-inf`` or ``nan`` (JSON has no such numbers)
``{"unsupported": what}``          a value no writer can rebuild (bytes, a set, an opaque record)
str, int, float, bool, null        that value
=================================  ====================================================

Readers keep ``{"unsupported": ...}`` leaves so that the value is still reported in ``extras``;
writers refuse a structure holding one (:func:`check_writable`). Structures read from a file are
validated (:func:`validate`): node types, nesting at most :data:`MAX_DEPTH` deep, and every tensor
named exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import CompressionError, WeightFileError

__all__ = ["MAX_DEPTH", "Node", "leaf", "validate", "check_writable", "tensor_names", "extras_of"]

#: Containers nest a handful of levels in real checkpoints; deeper means cyclic or hostile.
MAX_DEPTH = 100
#: A structure node (see the module docstring).
Node = Any

_CONTAINERS = ("dict", "odict", "list", "tuple")
_SUFFIX = " (corrupted or not written by coreprune)"
_FLOAT_TAGS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def leaf(value: Any) -> Node:
    """The node of a non-tensor value read from a checkpoint (recursing into plain containers).

    Examples
    --------
    >>> leaf({"lr": 0.1, "betas": (0.9, 0.999), "best": float("inf")})
    {'dict': [['lr', 0.1], ['betas', {'tuple': [0.9, 0.999]}], ['best', {'float': 'inf'}]]}
    >>> leaf(b"raw")
    {'unsupported': 'a bytes value'}
    """
    return _leaf(value, 0)


def _leaf(value: Any, depth: int) -> Node:
    if depth > MAX_DEPTH:
        return {"unsupported": f"containers nested deeper than {MAX_DEPTH} levels"}
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind in (list, tuple):
        return {kind.__name__: [_leaf(v, depth + 1) for v in value]}
    if kind is dict or kind.__name__ == "OrderedDict" and kind.__module__ == "collections":
        pairs = []
        for k, v in value.items():
            if not _is_key(k):
                return {"unsupported": f"a dict with a {type(k).__name__} key"}
            pairs.append([k, _leaf(v, depth + 1)])
        return {"dict" if kind is dict else "odict": pairs}
    return {"unsupported": f"a {getattr(kind, '__name__', 'value')} value"}


def _is_key(k: Any) -> bool:
    return k is None or type(k) in (str, bool, int) or type(k) is float and math.isfinite(k)


def _walk(node: Node, visit: Callable[[Node, int], None], depth: int = 0) -> None:
    visit(node, depth)
    if isinstance(node, dict):
        for kind in _CONTAINERS:
            if kind in node:
                items = node[kind]
                children = (v for _, v in items) if kind in ("dict", "odict") else iter(items)
                for child in children:
                    _walk(child, visit, depth + 1)


def validate(node: Any, names: Iterable[str], where: str) -> Node:
    """Check a structure read from a file; return it unchanged.

    Parameters
    ----------
    node : object
        The structure as decoded from JSON.
    names : iterable of str
        The tensors the file holds: each must be named by exactly one ``{"tensor": name}`` node.
    where : str
        Prefix of the error message (the file path).

    Raises
    ------
    WeightFileError
        A node of an unknown shape, nesting deeper than :data:`MAX_DEPTH`, a key that is not a
        scalar, a tensor named twice or not at all, or a name the file does not hold.

    Examples
    --------
    >>> validate({"dict": [["epoch", 3], ["w", {"tensor": "w"}]]}, ["w"], "m.cpz")["dict"][0]
    ['epoch', 3]
    >>> validate({"list": [{"tensor": "w"}, {"tensor": "w"}]}, ["w"], "m.cpz")
    Traceback (most recent call last):
    ...
    coreprune.errors.WeightFileError: m.cpz: the structure names tensor 'w' twice (corrupted ...)
    """
    wanted = set(names)
    seen: set[str] = set()

    def bad(problem: str) -> WeightFileError:
        return WeightFileError(f"{where}: {problem}{_SUFFIX}")

    # Iterative, depth-first: a hostile tree must not overflow the stack before the depth check.
    stack: list[tuple[Any, int]] = [(node, 0)]
    while stack:
        n, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise bad(f"the structure nests deeper than {MAX_DEPTH} levels")
        if n is None or type(n) in (str, bool, int):
            continue
        if type(n) is float:
            if not math.isfinite(n):
                raise bad("the structure holds a non-finite number")
            continue
        if type(n) is not dict or len(n) != 1:
            raise bad(f"a structure node is a {type(n).__name__}, not a value or a one-key object")
        (kind, body), = n.items()
        if kind == "tensor":
            if type(body) is not str or body not in wanted:
                raise bad(f"the structure names a tensor {str(body)!r:.80} that is not among the tensors")
            if body in seen:
                raise bad(f"the structure names tensor {body!r:.80} twice")
            seen.add(body)
        elif kind == "float":
            if body not in _FLOAT_TAGS:
                raise bad(f"the structure holds an unknown number {str(body)!r:.20}")
        elif kind == "unsupported":
            if type(body) is not str:
                raise bad("an unsupported node without its description")
        elif kind in ("list", "tuple"):
            if type(body) is not list:
                raise bad(f"a {kind} node does not hold a list")
            stack.extend((c, depth + 1) for c in body)
        elif kind in ("dict", "odict"):
            if type(body) is not list:
                raise bad(f"a {kind} node does not hold a list of pairs")
            keys = set()
            for pair in body:
                if type(pair) is not list or len(pair) != 2 or not _is_key(pair[0]):
                    raise bad(f"a {kind} node holds something other than [scalar key, node] pairs")
                if (type(pair[0]), pair[0]) in keys:
                    raise bad(f"a {kind} node holds the key {str(pair[0])!r:.60} twice")
                keys.add((type(pair[0]), pair[0]))
                stack.append((pair[1], depth + 1))
        else:
            raise bad(f"a structure node of unknown kind {kind!r:.40}")
    missing = wanted - seen
    if missing:
        raise bad(f"the structure does not place tensor {sorted(missing)[0]!r:.80}")
    return node


def tensor_names(node: Node) -> list[str]:
    """The tensor names of a structure, in the order they appear.

    Examples
    --------
    >>> tensor_names({"odict": [["b", {"tensor": "b"}], ["a", {"tensor": "a"}], ["n", 1]]})
    ['b', 'a']
    """
    out: list[str] = []
    _walk(node, lambda n, _d: out.append(n["tensor"]) if isinstance(n, dict) and "tensor" in n else None)
    return out


def check_writable(node: Node, names: Iterable[str], fmt: str) -> None:
    """Raise unless a writer of ``fmt`` can rebuild ``node`` around the tensors ``names``.

    Raises
    ------
    CompressionError
        The structure holds a value no writer can rebuild (``{"unsupported": ...}``) or does not
        place exactly the tensors being written.

    Examples
    --------
    >>> check_writable({"dict": [["cfg", {"unsupported": "a bytes value"}]]}, [], "torch")
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: checkpoint entry 'cfg' is a bytes value, which a torch file ...
    """
    for name, value in _leaves(node, ""):
        if isinstance(value, dict) and "unsupported" in value:
            raise CompressionError(
                f"checkpoint entry {name or '(the top)'!r:.80} is {value['unsupported']}, which a {fmt} file "
                "written by coreprune cannot hold; write the tensors alone (a .safetensors or .npz output) "
                "or remove that entry"
            )
    try:
        validate(node, names, "cannot write the checkpoint structure")
    except WeightFileError as e:
        raise CompressionError(e.args[0].removesuffix(_SUFFIX)) from None


def _leaves(node: Node, name: str) -> list[tuple[str, Node]]:
    """(dotted name, node) of every non-container node, with the names the torch reader gives."""
    out: list[tuple[str, Node]] = []
    stack = [(node, name)]
    while stack:
        n, at = stack.pop()
        if isinstance(n, dict) and ("dict" in n or "odict" in n or "list" in n or "tuple" in n):
            (kind, body), = n.items()
            pairs = body if kind in ("dict", "odict") else list(enumerate(body))
            for k, child in reversed(pairs):
                part = k if type(k) is str else str(k)
                stack.append((child, f"{at}.{part}" if at else part))
        else:
            out.append((at, n))
    return out


def _value_of(node: Node) -> Any:
    """The Python value of a node without tensors (a leaf of ``extras``)."""
    if not isinstance(node, dict):
        return node
    (kind, body), = node.items()
    if kind == "float":
        return _FLOAT_TAGS[body]
    if kind == "unsupported":
        return f"<{body}>"
    if kind == "list":
        return [_value_of(c) for c in body]
    if kind == "tuple":
        return tuple(_value_of(c) for c in body)
    if kind in ("dict", "odict"):
        return {k: _value_of(v) for k, v in body}
    raise CompressionError(f"a tensor node has no plain value ({body!r:.80})")


def _holds_tensor(node: Node) -> bool:
    found = []
    _walk(node, lambda n, _d: found.append(1) if isinstance(n, dict) and "tensor" in n else None)
    return bool(found)


def extras_of(node: Node) -> dict[str, Any]:
    """The non-tensor values of a structure by dotted name, as the torch reader's ``extras`` has them.

    A list or tuple holding no tensor is one value; an empty dict is one value (``{}``).

    Examples
    --------
    >>> extras_of({"dict": [["sd", {"odict": [["w", {"tensor": "sd.w"}]]}], ["epoch", 3],
    ...                     ["groups", {"list": [{"dict": [["lr", 0.1]]}]}]]})
    {'epoch': 3, 'groups': [{'lr': 0.1}]}
    """
    out: dict[str, Any] = {}
    stack: list[tuple[Node, str]] = [(node, "")]
    while stack:
        n, at = stack.pop()
        kind = next(iter(n)) if isinstance(n, dict) else None
        if kind in ("dict", "odict") and n[kind]:
            for k, child in reversed(n[kind]):
                part = k if type(k) is str else str(k)
                stack.append((child, f"{at}.{part}" if at else part))
        elif kind in ("list", "tuple") and _holds_tensor(n):
            for i, child in reversed(list(enumerate(n[kind]))):
                stack.append((child, f"{at}.{i}" if at else str(i)))
        elif kind != "tensor":
            if not at and kind in ("dict", "odict"):
                continue  # an empty checkpoint dict: nothing to report
            out[at or "value"] = _value_of(n)
    return out
