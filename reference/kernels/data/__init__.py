"""Kernels the NumPy-only training layer takes through `kernel_gate`, in a process that has loaded Numba.

philox (keyed Philox uniforms of the plan's masks), seedseq (SeedSequence's Philox keys of keyed.py),
randaugment (RandAugment of all the rows of a step), crop (the random-resized crop's resize). Each gives
the bits of the NumPy code that calls it; that code never imports these modules itself. Importing this
package imports none of them.
"""
