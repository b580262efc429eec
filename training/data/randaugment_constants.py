"""The numbers RandAugment's NumPy ops (randaugment_automl.py) and their Numba kernel
(kernels/data/randaugment.py) both compute with, so that the kernel does not import them back from the
module that calls it. NumPy only."""

import numpy as np

FILL = 128  # replace value of geometric ops and cutout (distort_image_with_randaugment)
GREY_WEIGHTS = (np.float32(0.2989), np.float32(0.5870), np.float32(0.1140))  # tf.image.rgb_to_grayscale
INV_255 = np.float32(1.0 / 255.0)  # uint8 -> [0, 1] (convert_image_dtype)
GREY_SCALE = np.float32(255.5)  # [0, 1] -> uint8 by truncation (convert_image_dtype's saturating cast)
BLEND_FIRST, BLEND_SECOND, BLEND_INSIDE, BLEND_CLIPPED = range(4)  # what `blend` does with a factor
# Sharpness's smoothing kernel, [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, as float32 weights held in float64
SMOOTH_EDGE, SMOOTH_CENTRE = (float(v) for v in np.array([1, 5], np.float32) / np.float32(13.0))
