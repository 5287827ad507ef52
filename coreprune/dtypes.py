"""The ml_dtypes types coreprune knows by name: one list for selection, the file formats and .cpz.

NumPy has no bfloat16 or float8; ``ml_dtypes`` adds them as NumPy dtypes. NumPy's type hierarchy
does not classify them (``np.issubdtype(bfloat16, np.floating)`` is False), so code that must
recognise them looks their names up here. Which of them exist depends on the installed ml_dtypes
version (the MXNet env pins ml_dtypes < 0.5), hence :func:`ml_dtype` returning None.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["ML_FLOAT_NAMES", "ML_INT_NAMES", "ml_dtype"]

#: Floating types of ml_dtypes, by NumPy dtype name.
ML_FLOAT_NAMES = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e4m3b11fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e3m4",
        "float8_e4m3",
        "float8_e8m0fnu",
        "float6_e2m3fn",
        "float6_e3m2fn",
        "float4_e2m1fn",
    }
)

#: Narrow integer types of ml_dtypes (one byte per element in memory).
ML_INT_NAMES = frozenset({"int4", "uint4", "int2", "uint2"})


def ml_dtype(name: str) -> np.dtype | None:
    """The ml_dtypes dtype called ``name``, or None if it is not one or this ml_dtypes lacks it.

    Examples
    --------
    >>> ml_dtype("bfloat16").itemsize
    2
    >>> ml_dtype("float32") is None
    True
    """
    if name not in ML_FLOAT_NAMES and name not in ML_INT_NAMES:
        return None
    found = getattr(ml_dtypes, name, None)
    return None if found is None else np.dtype(found)
