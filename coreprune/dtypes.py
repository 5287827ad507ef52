"""The dtype registry: every element type coreprune knows, and its name in each file format and framework.

One row per NumPy dtype (by its NumPy name, ``"float32"``, ``"bfloat16"``): its safetensors code
(``"F32"``), its PyTorch dtype (``torch.float32``) and legacy typed storage (``torch.FloatStorage``),
its MXNet/mshadow type flag (and whether MXNet 1.9.1 loads it), whether ``.cpz`` stores it (its
``.cpz`` name is the NumPy name), and whether it comes from ``ml_dtypes``. Every format module and
both framework adapters derive their tables from :data:`DTYPES`; nothing else lists dtypes.

NumPy has no bfloat16 or float8; ``ml_dtypes`` adds them as NumPy dtypes. NumPy's type hierarchy
does not classify them (``np.issubdtype(bfloat16, np.floating)`` is False), so code that must
recognise them looks their names up here (:data:`ML_FLOAT_NAMES`). Which of them exist depends on
the installed ml_dtypes version (the MXNet env pins ml_dtypes < 0.5), hence :func:`ml_dtype` and
:attr:`DtypeInfo.dtype` returning None.

Examples
--------
>>> info = by_name("bfloat16")
>>> info.safetensors, info.torch, info.torch_storage, info.mxnet_flag, info.ml
('BF16', 'bfloat16', 'BFloat16Storage', 12, True)
>>> safetensors_dtypes()["F16"].str, mxnet_type_flags()[0].str
('<f2', '<f4')
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = [
    "DtypeInfo",
    "DTYPES",
    "ML_FLOAT_NAMES",
    "ML_INT_NAMES",
    "TORCH_ALIASES",
    "TORCH_WITHOUT_NUMPY",
    "by_name",
    "ml_dtype",
    "safetensors_dtypes",
    "torch_dtypes",
    "torch_storage_dtypes",
    "mxnet_type_flags",
    "mxnet_writable_flags",
    "cpz_dtype_names",
]


@dataclass(frozen=True)
class DtypeInfo:
    """One element type and its names.

    Attributes
    ----------
    name : str
        The NumPy dtype name (also the ``.cpz`` manifest name).
    safetensors : str or None
        safetensors dtype code (``"F32"``); None where safetensors has none.
    torch : str or None
        ``torch.<name>`` of the dtype (``torch.save`` pickles it for ``_rebuild_tensor_v3``).
    torch_storage : str or None
        The legacy typed storage (``"FloatStorage"``) ``torch.save`` names for it; None for the
        dtypes newer than typed storages (uint16/32/64, float8), which only the v3 form names.
    mxnet_flag : int or None
        The mshadow type flag of MXNet ``.params`` files.
    mxnet_writable : bool
        MXNet 1.9.1 loads files with this flag (flags 8-11 are read but MXNet refuses them).
    ml : bool
        An ``ml_dtypes`` type (NumPy has no such dtype of its own).
    """

    name: str
    safetensors: str | None = None
    torch: str | None = None
    torch_storage: str | None = None
    mxnet_flag: int | None = None
    mxnet_writable: bool = False
    ml: bool = False

    @property
    def dtype(self) -> np.dtype | None:
        """The native NumPy dtype; None for an ml_dtypes type this ml_dtypes lacks."""
        if self.ml:
            found = getattr(ml_dtypes, self.name, None)
            return None if found is None else np.dtype(found)
        return np.dtype(self.name)


_I = DtypeInfo
#: Every dtype coreprune knows: NumPy's (bfloat16 beside float16, in safetensors' order), then the
#: other ml_dtypes floats, then ml_dtypes' narrow integers.
DTYPES: tuple[DtypeInfo, ...] = (
    _I("bool", "BOOL", "bool", "BoolStorage", 7, True),
    _I("uint8", "U8", "uint8", "ByteStorage", 3, True),
    _I("int8", "I8", "int8", "CharStorage", 5, True),
    _I("uint16", "U16", "uint16", None, 9),
    _I("int16", "I16", "int16", "ShortStorage", 8),
    _I("float16", "F16", "float16", "HalfStorage", 2, True),
    _I("bfloat16", "BF16", "bfloat16", "BFloat16Storage", 12, True, ml=True),
    _I("uint32", "U32", "uint32", None, 10),
    _I("int32", "I32", "int32", "IntStorage", 4, True),
    _I("float32", "F32", "float32", "FloatStorage", 0, True),
    _I("uint64", "U64", "uint64", None, 11),
    _I("int64", "I64", "int64", "LongStorage", 6, True),
    _I("float64", "F64", "float64", "DoubleStorage", 1, True),
    _I("complex64", "C64", "complex64", "ComplexFloatStorage"),
    _I("complex128", None, "complex128", "ComplexDoubleStorage"),
    _I("float8_e4m3fn", "F8_E4M3", "float8_e4m3fn", ml=True),
    _I("float8_e5m2", "F8_E5M2", "float8_e5m2", ml=True),
    _I("float8_e4m3fnuz", "F8_E4M3FNUZ", "float8_e4m3fnuz", ml=True),
    _I("float8_e5m2fnuz", "F8_E5M2FNUZ", "float8_e5m2fnuz", ml=True),
    _I("float8_e8m0fnu", "F8_E8M0", "float8_e8m0fnu", ml=True),
    _I("float8_e4m3b11fnuz", ml=True),
    _I("float8_e3m4", ml=True),
    _I("float8_e4m3", ml=True),
    _I("float6_e2m3fn", ml=True),
    _I("float6_e3m2fn", ml=True),
    _I("float4_e2m1fn", ml=True),
    _I("int4", ml=True),
    _I("uint4", ml=True),
    _I("int2", ml=True),
    _I("uint2", ml=True),
)
_BY_NAME = {info.name: info for info in DTYPES}

#: Narrow integer types of ml_dtypes (one byte per element in memory).
ML_INT_NAMES = frozenset(i.name for i in DTYPES if i.ml and i.name.startswith(("int", "uint")))
#: Floating types of ml_dtypes, by NumPy dtype name.
ML_FLOAT_NAMES = frozenset(i.name for i in DTYPES if i.ml and i.name not in ML_INT_NAMES)

#: PyTorch's other spellings of its dtypes (``torch.float`` is ``torch.float32``).
TORCH_ALIASES: dict[str, str] = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
#: Real PyTorch dtypes with no NumPy twin: a tensor of one is refused by name.
TORCH_WITHOUT_NUMPY: tuple[str, ...] = (
    "complex32",
    "chalf",
    "float4_e2m1fn_x2",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bits16",
    "quint8",
    "qint8",
    "qint32",
    "quint4x2",
    "quint2x4",
)


def by_name(name: str) -> DtypeInfo | None:
    """The registry row of the NumPy dtype called ``name``, or None.

    Examples
    --------
    >>> by_name("float32").safetensors, by_name("object") is None
    ('F32', True)
    """
    return _BY_NAME.get(name)


def ml_dtype(name: str) -> np.dtype | None:
    """The ml_dtypes dtype called ``name``, or None if it is not one or this ml_dtypes lacks it.

    Examples
    --------
    >>> ml_dtype("bfloat16").itemsize
    2
    >>> ml_dtype("float32") is None
    True
    """
    info = _BY_NAME.get(name)
    return info.dtype if info is not None and info.ml else None


def safetensors_dtypes() -> dict[str, np.dtype]:
    """safetensors code -> little-endian NumPy dtype, for the types this ml_dtypes provides.

    Examples
    --------
    >>> list(safetensors_dtypes())[:3]
    ['BOOL', 'U8', 'I8']
    """
    out: dict[str, np.dtype] = {}
    for info in DTYPES:
        dt = info.dtype if info.safetensors else None
        if dt is not None and info.safetensors is not None:
            out[info.safetensors] = dt if info.ml else dt.newbyteorder("<")
    return out


def torch_dtypes() -> dict[str, np.dtype | None]:
    """``torch.<name>`` (aliases included) -> NumPy dtype; None where NumPy (with this ml_dtypes) has none.

    Examples
    --------
    >>> d = torch_dtypes()
    >>> d["float"], d["bfloat16"].name, d["qint8"] is None
    (dtype('float32'), 'bfloat16', True)
    """
    out: dict[str, np.dtype | None] = {i.torch: i.dtype for i in DTYPES if i.torch}
    out.update({alias: out[name] for alias, name in TORCH_ALIASES.items()})
    out.update({name: None for name in TORCH_WITHOUT_NUMPY})
    return out


def torch_storage_dtypes() -> dict[str, np.dtype]:
    """``torch.<Name>Storage`` -> element dtype of the legacy typed storage.

    Examples
    --------
    >>> torch_storage_dtypes()["LongStorage"]
    dtype('int64')
    """
    return {i.torch_storage: i.dtype for i in DTYPES if i.torch_storage and i.dtype is not None}


def mxnet_type_flags() -> dict[int, np.dtype]:
    """mshadow type flag -> little-endian NumPy dtype.

    Examples
    --------
    >>> {k: v.name for k, v in sorted(mxnet_type_flags().items())[:3]}
    {0: 'float32', 1: 'float64', 2: 'float16'}
    """
    out: dict[int, np.dtype] = {}
    for info in DTYPES:
        dt = info.dtype if info.mxnet_flag is not None else None
        if dt is not None and info.mxnet_flag is not None:
            out[info.mxnet_flag] = dt if info.ml else dt.newbyteorder("<")
    return dict(sorted(out.items()))


def mxnet_writable_flags() -> dict[str, int]:
    """NumPy dtype name -> type flag, for the dtypes MXNet 1.9.1 can load.

    Examples
    --------
    >>> mxnet_writable_flags()["float32"], "uint16" in mxnet_writable_flags()
    (0, False)
    """
    flags = {i.name: i.mxnet_flag for i in DTYPES if i.mxnet_writable and i.mxnet_flag is not None}
    return dict(sorted(flags.items(), key=lambda kv: kv[1]))


def cpz_dtype_names() -> frozenset[str]:
    """The dtype names a ``.cpz`` manifest may hold: every row (the ml_dtypes ones need ml_dtypes).

    Examples
    --------
    >>> "bfloat16" in cpz_dtype_names(), "object" in cpz_dtype_names()
    (True, False)
    """
    return frozenset(_BY_NAME)
