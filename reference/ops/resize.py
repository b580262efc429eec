"""Bilinear resize: re-exported from effv2_train.data.resize, where it lives so that the data
pipeline imports no Numba (importing effv2_reference.ops loads the Numba kernels)."""

from effv2_train.data.resize import interpolation_matrix, resize_bilinear

__all__ = ["interpolation_matrix", "resize_bilinear"]
