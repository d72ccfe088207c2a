"""GGUF block quantizations in a form ONNX Runtime computes exactly (the `native` precision).

Every GGUF block format this module knows dequantizes, per sub-block of `block` consecutive input
features of one output row, as

    w = (code - zero) * scale + add

with an unsigned integer `code`, an integer `zero`, a float32 `scale` and a float32 `add` (zero
for the symmetric formats). gguf's own dequantization computes exactly that in float32, with
`scale` and `add` themselves exact products of a float16 and a small integer. So:

* `(code - zero) * scale` is com.microsoft MatMulNBits with `bits` 4 (codes < 16) or 8
  (5-, 6- and 8-bit codes), `block_size` 16 or 32, uint8 zero points and float32 scales;
* `add` (Q4_1, Q5_1 and the K-quants with a min: Q2_K, Q4_K, Q5_K) is one float per sub-block and
  output feature, applied as `sum(x over the sub-block) @ add`: a tiny second MatMul.

Both are exact representations of gguf's float32 weights: evaluating the graph on an identity
matrix reproduces `gguf.quants.dequantize` bit for bit on the cpu target (float32 scales); on the
cuda target scales and adds are float16, so the weights agree within that rounding
(`tests/test_native.py`). The ternary TQ1_0 and TQ2_0 are
MatMulNBits with `bits` 2, zero point 1 and `block_size` 32 (each 256-block's scale repeated). A format not listed here (IQ*,
MXFP4, ...) is not representable
exactly by MatMulNBits, so it goes to the next wider exact form: float32 weights (on the cuda
target an F16 tensor stays float16, exact; the others run float32 between casts). `describe` says per tensor
what it became; the exporter records that in config.json.
"""

from __future__ import annotations

import dataclasses

import numpy as np

QK_K = 256


@dataclasses.dataclass
class BlockWeight:
    """A matrix [n, k] as integer codes per sub-block with a scale, a zero point and an add."""

    source: str  # GGUF type name, e.g. "Q5_0"
    bits: int  # storage width of a code: 2, 4 or 8
    block: int  # sub-block size along k: 16, 32 or 256
    codes: np.ndarray  # uint8 [n, k // block, block], unpacked
    zero: np.ndarray  # uint8 [n, k // block]
    scale: np.ndarray  # float32 [n, k // block]
    add: np.ndarray | None  # float32 [n, k // block], None for symmetric formats

    @property
    def shape(self) -> tuple[int, int]:
        n, nb, b = self.codes.shape
        return n, nb * b

    def dequantize(self) -> np.ndarray:
        """float32 [n, k], computed as the graph computes it."""
        w = (self.codes.astype(np.float32) - self.zero[..., None].astype(np.float32)) \
            * self.scale[..., None]
        if self.add is not None:
            w = w + self.add[..., None]
        return w.reshape(self.shape)

    def take_rows(self, order: np.ndarray) -> BlockWeight:
        """The same weight with its rows (output features) reordered."""
        return dataclasses.replace(
            self, codes=self.codes[order], zero=self.zero[order], scale=self.scale[order],
            add=None if self.add is None else self.add[order])

    def packed_codes(self) -> np.ndarray:
        """MatMulNBits' B: uint8 [n, k // block, block * bits / 8], lowest bits first."""
        if self.bits == 8:
            return np.ascontiguousarray(self.codes)
        per = 8 // self.bits
        c = self.codes
        out = np.zeros(c[..., 0::per].shape, dtype=np.uint8)
        for j in range(per):
            out |= (c[..., j::per] << np.uint8(self.bits * j)).astype(np.uint8)
        return np.ascontiguousarray(out)

    def packed_zero(self) -> np.ndarray:
        """MatMulNBits' zero_points: uint8; 4- and 2-bit ones packed 2 or 4 per byte, each row
        padded to whole bytes."""
        if self.bits == 8:
            return np.ascontiguousarray(self.zero.reshape(-1))
        per = 8 // self.bits
        n, nb = self.zero.shape
        z = np.zeros((n, -(-nb // per) * per), dtype=np.uint8)
        z[:, :nb] = self.zero
        out = np.zeros((n, z.shape[1] // per), dtype=np.uint8)
        for j in range(per):
            out |= (z[:, j::per] << np.uint8(self.bits * j)).astype(np.uint8)
        return np.ascontiguousarray(out.reshape(-1))

    def describe(self) -> str:
        zeros = np.unique(self.zero)
        zero = str(int(zeros[0])) if len(zeros) == 1 else "per block"
        add = ", + per-block add" if self.add is not None else ""
        return (f"{self.source} -> MatMulNBits bits={self.bits} block={self.block} "
                f"zero={zero}{add} (exact)")


def concat_rows(parts: list[BlockWeight]) -> BlockWeight | None:
    """Stack weights along n (packed QKV) when they share a layout, else None."""
    first = parts[0]
    if any(p.bits != first.bits or p.block != first.block or (p.add is None) != (first.add is None)
           or p.shape[1] != first.shape[1] for p in parts):
        return None
    return BlockWeight(
        source="+".join(dict.fromkeys(p.source for p in parts)), bits=first.bits,
        block=first.block,
        codes=np.concatenate([p.codes for p in parts]),
        zero=np.concatenate([p.zero for p in parts]),
        scale=np.concatenate([p.scale for p in parts]),
        add=None if first.add is None else np.concatenate([p.add for p in parts]))


# -- unpacking, one function per GGUF type; each mirrors gguf.quants' dequantize_blocks -------

def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, group: int) -> np.ndarray:
    """Low nibbles of each `group` bytes, then their high nibbles (ggml's order)."""
    n = qs.shape[0]
    q = qs.reshape((n, -1, 1, group)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 1, 2, 1))
    return (q & np.uint8(0x0F)).reshape((n, -1))


def _high_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """Bit i of a little-endian uint32 per block, for i < count (Q5_0 / Q5_1)."""
    h = np.ascontiguousarray(qh).view(np.uint32).reshape((-1, 1))
    return ((h >> np.arange(count, dtype=np.uint32).reshape((1, count))) & 1).astype(np.uint8)


def _q4_0(b):
    d, qs = np.hsplit(b, [2])
    return _nibbles(qs, 16), 8, _f16(d), None, 32


def _q4_1(b):
    d, m, qs = np.hsplit(b, [2, 4])
    return _nibbles(qs, 16), 0, _f16(d), _f16(m), 32


def _q5_0(b):
    d, qh, qs = np.hsplit(b, [2, 6])
    return _nibbles(qs, 16) | (_high_bits(qh, 32) << 4), 16, _f16(d), None, 32


def _q5_1(b):
    d, m, qh, qs = np.hsplit(b, [2, 4, 8])
    return _nibbles(qs, 16) | (_high_bits(qh, 32) << 4), 0, _f16(d), _f16(m), 32


def _q8_0(b):
    d, x = np.hsplit(b, [2])
    codes = (np.ascontiguousarray(x).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return codes, 128, _f16(d), None, 32


def _q2_k(b):
    n = b.shape[0]
    scales, qs, d, dmin = np.hsplit(b, [QK_K // 16, QK_K // 16 + QK_K // 4, QK_K // 16 + QK_K // 4 + 2])
    d, dmin = _f16(d), _f16(dmin)
    scale = d * (scales & 0xF).astype(np.float32)
    add = -(dmin * (scales >> 4).astype(np.float32))
    shift = np.array([0, 2, 4, 6], dtype=np.uint8).reshape((1, 1, 4, 1))
    codes = ((qs.reshape((n, -1, 1, 32)) >> shift) & np.uint8(3)).reshape((n, QK_K))
    return codes, 0, scale, add, 16


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, scales, d = np.hsplit(b, [QK_K // 8, QK_K // 8 + QK_K // 4, QK_K // 8 + QK_K // 4 + 12])
    d = _f16(d)
    lsc, hsc = np.hsplit(scales, [8])
    lsc = (lsc.reshape((n, 1, 8)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 2, 1))).reshape((n, 16))
    hsc = (hsc.reshape((n, 1, 4)) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape((1, 4, 1))).reshape((n, 16))
    sc = (lsc & np.uint8(0x0F)) | ((hsc & np.uint8(0x03)) << np.uint8(4))
    scale = d * (sc.astype(np.int8) - np.int8(32)).astype(np.float32)
    ql = qs.reshape((n, -1, 1, 32)) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape((1, 1, 4, 1))
    qh = hmask.reshape((n, -1, 1, 32)) >> np.arange(8, dtype=np.uint8).reshape((1, 1, 8, 1))
    ql = ql.reshape((n, QK_K)) & np.uint8(3)
    qh = (qh.reshape((n, QK_K)) & np.uint8(1)) ^ np.uint8(1)
    # q = ql - 4 * (1 - h) in -4..3; code = q + 4
    codes = (ql + 4 - (qh << np.uint8(2))).astype(np.uint8)
    return codes, 4, scale, None, 16


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = scales.shape[0]
    s = scales.reshape((n, 3, 4))
    d, m, m_d = np.split(s, 3, axis=-2)
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.reshape((n, 8)), mn.reshape((n, 8))


def _q4_k(b):
    n = b.shape[0]
    d, dmin, scales, qs = np.hsplit(b, [2, 4, 16])
    sc, mn = _k_scale_min(scales)
    scale = _f16(d) * sc.astype(np.float32)
    add = -(_f16(dmin) * mn.astype(np.float32))
    return _nibbles(qs, 32).reshape((n, QK_K)), 0, scale, add, 32


def _q5_k(b):
    n = b.shape[0]
    d, dmin, scales, qh, qs = np.hsplit(b, [2, 4, 16, 16 + QK_K // 8])
    sc, mn = _k_scale_min(scales)
    scale = _f16(d) * sc.astype(np.float32)
    add = -(_f16(dmin) * mn.astype(np.float32))
    ql = _nibbles(qs, 32).reshape((n, -1, 32))
    h = qh.reshape((n, -1, 1, 32)) >> np.arange(8, dtype=np.uint8).reshape((1, 1, 8, 1))
    h = (h & np.uint8(1)).reshape((n, -1, 32))
    return (ql | (h << np.uint8(4))).reshape((n, QK_K)), 0, scale, add, 32


def _q6_k(b):
    n = b.shape[0]
    ql, qh, scales, d = np.hsplit(b, [QK_K // 2, QK_K // 2 + QK_K // 4, QK_K // 2 + QK_K // 4 + QK_K // 16])
    scale = _f16(d) * np.ascontiguousarray(scales).view(np.int8).astype(np.float32)
    low = _nibbles(ql, 64).reshape((n, -1, 32))
    high = qh.reshape((n, -1, 1, 32)) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape((1, 1, 4, 1))
    high = (high & np.uint8(0x03)).reshape((n, -1, 32))
    return (low | (high << np.uint8(4))).reshape((n, QK_K)), 32, scale, None, 16


# Ternary blocks of 256 share one scale; MatMulNBits gets them as 8 sub-blocks of 32 with that
# scale each (exact): ONNX Runtime 1.31's CPU kernel has a fast bits=2 path for block 32 with
# accuracy_level 4 (0.22 ms for a 2048x2048 matvec, one thread) and only a slow one for block 256
# (25 ms, any accuracy_level).
TERNARY_BLOCK = 32


def _ternary_scale(d: np.ndarray) -> np.ndarray:
    return np.repeat(_f16(d), QK_K // TERNARY_BLOCK, axis=-1)


def _tq1_0(b):
    """TQ1_0 (ternary, base-3 packed): codes 0..2, zero 1, one float16 scale per 256."""
    n = b.shape[0]
    qs, rest = np.hsplit(b, [(QK_K - 4 * QK_K // 64) // 5])
    qh, d = np.hsplit(rest, [QK_K // 64])
    pow3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
    qs0 = (qs[..., :32].reshape((n, -1, 1, 32)) * pow3.reshape((1, 1, 5, 1))).reshape((n, -1))
    qs1 = (qs[..., 32:].reshape((n, -1, 1, 16)) * pow3.reshape((1, 1, 5, 1))).reshape((n, -1))
    qh = (qh.reshape((n, -1, 1, 4)) * pow3[:4].reshape((1, 1, 4, 1))).reshape((n, -1))
    q = np.concatenate([qs0, qs1, qh], axis=-1)
    codes = ((q.astype(np.uint16) * 3) >> 8).astype(np.uint8)
    return codes, 1, _ternary_scale(d), None, TERNARY_BLOCK


def _tq2_0(b):
    """TQ2_0 (ternary, 2-bit codes): codes 0..3 (3 unused), zero 1, one scale per 256."""
    n = b.shape[0]
    qs, d = np.hsplit(b, [QK_K // 4])
    q = qs.reshape((n, -1, 1, 32)) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape((1, 1, 4, 1))
    return (q & np.uint8(3)).reshape((n, QK_K)), 1, _ternary_scale(d), None, TERNARY_BLOCK


# name -> (bytes per block, values per block, unpack)
FORMATS = {
    "Q4_0": (18, 32, _q4_0),
    "Q4_1": (20, 32, _q4_1),
    "Q5_0": (22, 32, _q5_0),
    "Q5_1": (24, 32, _q5_1),
    "Q8_0": (34, 32, _q8_0),
    "Q2_K": (84, QK_K, _q2_k),
    "Q3_K": (110, QK_K, _q3_k),
    "Q4_K": (144, QK_K, _q4_k),
    "Q5_K": (176, QK_K, _q5_k),
    "Q6_K": (210, QK_K, _q6_k),
    "TQ1_0": (54, QK_K, _tq1_0),
    "TQ2_0": (66, QK_K, _tq2_0),
}

# Formats whose codes exceed 4 bits are stored as 8-bit codes (exact; MatMulNBits has no 5/6-bit).
WIDE_CODES = {"Q5_0", "Q5_1", "Q8_0", "Q5_K", "Q6_K"}
# Ternary formats: 2-bit codes with zero point 1, block 32 (ONNX Runtime 1.31's CPU
# MatMulNBits computes bits=2 exactly with accuracy_level 0: checked in tests/test_native.py)
TERNARY = {"TQ1_0", "TQ2_0"}


def decompose(type_name: str, data: np.ndarray, shape: tuple[int, int]) -> BlockWeight | None:
    """GGUF tensor bytes (any shape, `n * k` values of `type_name`) -> BlockWeight [n, k], or
    None when the format is not one MatMulNBits represents exactly."""
    fmt = FORMATS.get(type_name)
    if fmt is None:
        return None
    size, per_block, unpack = fmt
    n, k = shape
    if k % per_block:
        return None
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape((-1, size))
    codes, zero, scale, add, block = unpack(raw)
    sub = k // block
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape((n, sub, block))
    scale = np.ascontiguousarray(scale, dtype=np.float32).reshape((n, sub))
    zero = np.full((n, sub), zero, dtype=np.uint8)
    if add is not None:
        add = np.ascontiguousarray(add, dtype=np.float32).reshape((n, sub))
    bits = 8 if type_name in WIDE_CODES else 2 if type_name in TERNARY else 4
    return BlockWeight(source=type_name, bits=bits, block=block,
                       codes=codes, zero=zero, scale=scale, add=add)
