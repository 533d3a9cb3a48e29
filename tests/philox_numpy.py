"""An independent NumPy Philox4x32-10 (Salmon et al. 2011), for known-answer tests."""

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """counter: 4 uint32 arrays, key: 2 uint32 arrays -> 4 uint32 arrays (as uint64)."""
    x = [np.asarray(c, dtype=np.uint64) & MASK for c in counter]
    k0, k1 = (np.asarray(k, dtype=np.uint64) & MASK for k in key)
    for _ in range(10):
        p0, p1 = M0 * x[0], M1 * x[2]
        x = [(p1 >> np.uint64(32)) ^ x[1] ^ k0, p1 & MASK, (p0 >> np.uint64(32)) ^ x[3] ^ k1, p0 & MASK]
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return x


def stream_uniforms(seed: int, offset: int, numel: int) -> np.ndarray:
    """l0fast's noise stream: element e is word e % 4 of Philox at counter e // 4, as tl.rand maps it."""
    e = np.arange(offset, offset + numel, dtype=np.uint64)
    ctr = e >> np.uint64(2)
    words = philox4x32_10((ctr & MASK, ctr >> np.uint64(32), 0 * ctr, 0 * ctr), (seed & 0xFFFFFFFF, seed >> 32))
    word = np.choose((e & np.uint64(3)).astype(np.int64), words).astype(np.uint32).view(np.int32)
    folded = np.where(word < 0, ~word, word)
    return folded.astype(np.float32) * np.float32(4.6566127342e-10)
