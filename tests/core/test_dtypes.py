"""The dtype registry: one row per dtype, names unique in every format, each table derived from it."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

from coreprune import dtypes
from coreprune.io import mxnet_params, safetensors_format, torch_pickle


def test_each_row_is_the_numpy_dtype_it_names():
    for info in dtypes.DTYPES:
        dt = info.dtype
        if info.ml:
            assert (dt is None) == (getattr(ml_dtypes, info.name, None) is None), info.name
        if dt is not None:
            assert dt.name == info.name and dt.isnative


def test_names_are_unique_in_every_format():
    for field in ("name", "safetensors", "torch", "torch_storage", "mxnet_flag"):
        values = [getattr(i, field) for i in dtypes.DTYPES if getattr(i, field) is not None]
        assert len(values) == len(set(values)), field


def test_format_tables_are_the_registry():
    assert safetensors_format.DTYPES == dtypes.safetensors_dtypes()
    assert mxnet_params.TYPE_FLAGS == dtypes.mxnet_type_flags()
    assert torch_pickle.STORAGE_DTYPES == dtypes.torch_storage_dtypes()
    assert torch_pickle.TORCH_DTYPES == dtypes.torch_dtypes()


def test_ml_names_match_ml_dtypes_and_numpy_does_not_classify_them():
    assert dtypes.ML_FLOAT_NAMES.isdisjoint(dtypes.ML_INT_NAMES)
    for name in dtypes.ML_FLOAT_NAMES:
        dt = dtypes.ml_dtype(name)
        if dt is not None:
            assert not np.issubdtype(dt, np.floating) and ml_dtypes.finfo(dt).bits in (4, 6, 8, 16)
    assert dtypes.ml_dtype("float32") is None


@pytest.mark.torch
def test_torch_names_are_torch_dtypes_of_the_same_width():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    for name, dt in dtypes.torch_dtypes().items():
        tdtype = getattr(torch, name, None)
        assert isinstance(tdtype, torch.dtype), name
        if dt is not None:
            assert tdtype.itemsize == dt.itemsize, name
    with warnings.catch_warnings():  # torch deprecates the typed storages its old files still name
        warnings.simplefilter("ignore", UserWarning)
        for storage, dt in dtypes.torch_storage_dtypes().items():
            assert getattr(torch, storage).dtype.itemsize == dt.itemsize, storage
