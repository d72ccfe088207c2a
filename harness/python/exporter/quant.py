"""Block quantization for com.microsoft MatMulNBits (symmetric, no zero points).

MatMulNBits dequantizes `w = (q - 2**(bits-1)) * scale` per block of `block_size` consecutive
input features of one output row. B is uint8 `[N, n_blocks, block_size * bits / 8]` (4-bit: the
element with the even index in the low nibble), scales `[N * n_blocks]`.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32


def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    n, k = w.shape
    n_blocks = (k + block - 1) // block
    pad = n_blocks * block - k
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)))
    return w.reshape(n, n_blocks, block)


def quantize_int4(w: np.ndarray, block: int = BLOCK, search: bool = True):
    """w: float32 [N, K] -> (packed uint8 [N, n_blocks, block/2], scales float32 [N*n_blocks]).

    The scale maps the value with the largest magnitude to -8 (as ggml's Q4_0 does); with
    `search`, a few smaller scales are also tried per block and the one with the least squared
    error is kept.
    """
    x = _blocks(w.astype(np.float32, copy=False), block)
    idx = np.argmax(np.abs(x), axis=-1)[..., None]
    peak = np.take_along_axis(x, idx, axis=-1)  # signed value of largest magnitude
    best_scale = peak / -8.0
    best_q = None
    best_err = None
    factors = (1.0, 0.96, 0.92, 0.88, 0.84) if search else (1.0,)
    for f in factors:
        scale = best_scale if f == 1.0 else (peak / -8.0) * f
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.rint(x * inv) + 8.0, 0, 15)
        err = np.sum(np.square((q - 8.0) * scale - x), axis=-1, keepdims=True)
        if best_q is None:
            best_q, best_err, chosen = q, err, scale
        else:
            better = err < best_err
            best_q = np.where(better, q, best_q)
            chosen = np.where(better, scale, chosen)
            best_err = np.minimum(err, best_err)
    if search:
        # one least-squares refit of the scale for the chosen integers, kept where it helps
        c = best_q - 8.0
        denom = np.sum(c * c, axis=-1, keepdims=True)
        refit = np.divide(np.sum(x * c, axis=-1, keepdims=True), denom,
                          out=chosen.copy(), where=denom > 0)
        inv = np.divide(1.0, refit, out=np.zeros_like(refit), where=refit != 0)
        q2 = np.clip(np.rint(x * inv) + 8.0, 0, 15)
        err2 = np.sum(np.square((q2 - 8.0) * refit - x), axis=-1, keepdims=True)
        better = err2 < best_err
        best_q = np.where(better, q2, best_q)
        chosen = np.where(better, refit, chosen)
    q = best_q.astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(packed), chosen.reshape(-1).astype(np.float32)


def quantize_int8(w: np.ndarray, block: int = BLOCK):
    """w: float32 [N, K] -> (uint8 [N, n_blocks, block], scales float32 [N*n_blocks])."""
    x = _blocks(w.astype(np.float32, copy=False), block)
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    scale = amax / 127.0
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    q = np.clip(np.rint(x * inv) + 128.0, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(q), scale.reshape(-1).astype(np.float32)


def dequantize(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of the above (used by tests): -> float32 [N, K]."""
    n, n_blocks, _ = packed.shape
    if bits == 4:
        q = np.empty((n, n_blocks, packed.shape[2] * 2), dtype=np.float32)
        q[..., 0::2] = packed & 0x0F
        q[..., 1::2] = packed >> 4
        q -= 8.0
    else:
        q = packed.astype(np.float32) - 128.0
    w = q * scales.reshape(n, n_blocks, 1)
    return w.reshape(n, -1)[:, :k]
