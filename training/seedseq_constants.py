"""NumPy's SeedSequence constants (numpy/random/bit_generator.pyx), shared by keyed.py's NumPy derivation
and the Numba kernel kernels/data/seedseq.py, so that neither imports the other for them. Plain ints."""

MASK = 0xFFFFFFFF  # every word is 32 bits
POOL = 4  # pool words (SeedSequence's default pool_size)
SHIFT = 16  # xorshift of the hash and the mix
INIT_A, MULT_A = 0x43B0D7E5, 0x931E8875  # hashing entropy into the pool
INIT_B, MULT_B = 0x8B51F9DD, 0x58F38DED  # hashing the pool into the state
MIX_L, MIX_R = 0xCA01F9DD, 0x4973F715
