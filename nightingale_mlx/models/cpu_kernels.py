"""S3Gen's and T3's attention, GELU and exp, and Linear layers, with fast paths for MLX's CPU backend.

On the CPU backend MLX evaluates exp and erf one scalar at a time (~20-45 ns per element), and
S3Gen's CFM spends most of its time in them: the attention softmax over (2, 8, T, T) scores in 56
transformer blocks per Euler step, and the exact GELU of their feed-forwards. There:
- attention runs in numpy (SIMD exp), its (batch, head) pairs split over two threads: 4-5x faster
  than `mx.fast.scaled_dot_product_attention` at S3Gen's shapes (T3 uses it over its KV cache);
- GELU uses a compiled rational erf of arithmetic ops only (abs err <= 4e-7): ~5x faster; GPT-2's
  tanh GELU uses numpy's SIMD tanh;
- Mish's one exp and HiFT's Snake sin are numpy's;
- Linear layers compute in fp32 BLAS whatever their stored precision, and decode-sized products
  (a few rows) use numpy's sgemv instead of MLX's sgemm.
Other devices use MLX's own kernels. `NIGHTINGALE_MLX_NATIVE=1` makes the CPU take them too (the
branches Metal takes), so CI proves both: `bench/` measures both, the parity tests run under both.
"""

import ctypes
import glob
import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

SPLIT_MIN_SCORES = 1 << 18  # below ~256k attention scores a second thread costs more than it saves
THREADS = min(2, os.cpu_count() or 1)
# Set to 1, every on_cpu() branch takes MLX's own kernels, as on Metal (read once, at import).
MLX_NATIVE = os.environ.get("NIGHTINGALE_MLX_NATIVE", "0").strip() not in ("", "0")


def on_cpu() -> bool:
    """True where the CPU fast paths below apply: MLX's CPU device, unless NIGHTINGALE_MLX_NATIVE is set."""
    return not MLX_NATIVE and mx.default_device() == mx.cpu


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=THREADS, initializer=_single_threaded_numpy_blas)


def _single_threaded_numpy_blas() -> Optional[int]:
    """Sets this thread's numpy BLAS to one thread; returns the previous count (None: no OpenBLAS)."""
    lib = _numpy_openblas()
    return None if lib is None else lib.openblas_set_num_threads_local(1)


@lru_cache(maxsize=1)
def _numpy_openblas():
    """numpy's bundled OpenBLAS (Linux wheels), or None (other builds: nothing to tune)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*.so*"))
    try:
        lib = ctypes.CDLL(libs[0]) if libs else None
        return lib if lib is not None and hasattr(lib, "openblas_set_num_threads_local") else None
    except OSError:
        return None


@contextmanager
def _own_threads():
    """Runs numpy's BLAS single-threaded while our kernels split work over THREADS themselves.

    numpy's OpenBLAS and MLX's are two libraries with two spinning thread pools: left at two
    threads each on a 2-core machine they slowed S3Gen ~1.7x and T3 decode ~1.3x (measured).
    """
    previous = _single_threaded_numpy_blas()  # the pool's threads are set once, at their start
    try:
        yield
    finally:
        if previous is not None:
            _numpy_openblas().openblas_set_num_threads_local(previous)


def _split(n: int, work, parallel: bool) -> None:
    """work(lo, hi) over [0, n): two halves on two threads (numpy releases the GIL), or one call."""
    if not parallel or THREADS < 2 or n < 2:
        work(0, n)
        return
    other = _pool().submit(work, n // 2, n)
    work(0, n // 2)  # this thread takes the first half
    other.result()


def softmax_(a: np.ndarray) -> None:
    """In-place softmax over the last axis of a float32 array."""
    a -= a.max(axis=-1, keepdims=True)
    np.exp(a, out=a)
    a *= 1.0 / a.sum(axis=-1, keepdims=True)


def numpy_f32(a: mx.array) -> np.ndarray:
    """Evaluates `a`; fp32 arrays come back as zero-copy (possibly strided) views: copying a fresh
    KV-cache slice cost ~1 ms per layer in page faults here."""
    return np.asarray(a if a.dtype == mx.float32 else a.astype(mx.float32))


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, bias: Optional[mx.array] = None,
              causal: bool = False) -> mx.array:
    """softmax(scale q k^T + bias) v for (B, H, Tq, d) queries and (B, H, Tk, d) keys and values;
    bias broadcasts to (B, H, Tq, Tk). `causal`: the queries are the last Tq positions of the keys,
    each attends to itself and before. On the CPU the (batch, head) pairs are split over two threads."""
    if not on_cpu():
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal" if causal else bias)
    B, H, Tq, _ = q.shape  # fp16 flows run in fp32 here
    Tk = k.shape[2]
    qs = (numpy_f32(q) * np.float32(scale)).reshape(B * H, Tq, -1)
    ks, vs = numpy_f32(k).reshape(B * H, Tk, -1), numpy_f32(v).reshape(B * H, Tk, -1)
    bs = None if bias is None else np.broadcast_to(numpy_f32(bias), (B, H, Tq, Tk)).reshape(B * H, Tq, Tk)
    if causal and Tq > 1:
        assert bias is None, "causal attention takes no bias"
        causal_bias = np.triu(np.full((Tq, Tk), -np.inf, np.float32), k=Tk - Tq + 1)
        bs = np.broadcast_to(causal_bias, (B * H, Tq, Tk))
    out = np.empty((B * H, Tq, vs.shape[-1]), np.float32)

    def part(lo: int, hi: int) -> None:
        scores = qs[lo:hi] @ ks[lo:hi].swapaxes(-1, -2)
        if bs is not None:
            scores += bs[lo:hi]
        softmax_(scores)
        np.matmul(scores, vs[lo:hi], out=out[lo:hi])

    with _own_threads():
        _split(B * H, part, B * H * Tq * Tk >= SPLIT_MIN_SCORES)
    return mx.array(out.reshape(B, H, Tq, -1)).astype(q.dtype)


def exp(x: mx.array) -> mx.array:
    """Elementwise exp; numpy's SIMD exp on the CPU (evaluates x there)."""
    if not on_cpu() or x.dtype != mx.float32:
        return mx.exp(x)
    return mx.array(np.exp(np.array(x)))


def gelu_tanh(x: mx.array) -> mx.array:
    """GPT-2's tanh-approximated GELU (torch's gelu_new, MLX's gelu_approx), in the reference's
    operation order; numpy's SIMD tanh on the CPU (MLX's took ~22 ms per GPT-2 medium layer at
    214 rows, this ~2 ms)."""
    if not on_cpu():
        return nn.gelu_approx(x)
    return mx.array(gelu_tanh_numpy(numpy_f32(x))).astype(x.dtype)


def gelu_tanh_numpy(a: np.ndarray) -> np.ndarray:
    """gelu_tanh of a float32 numpy array."""
    t = a * a
    t *= a
    t *= 0.044715
    t += a
    t *= math.sqrt(2.0 / math.pi)  # a Python float: float32 arithmetic, as torch's
    np.tanh(t, out=t)
    t += 1.0
    t *= a
    t *= 0.5
    return t


def snake(x: mx.array, alpha: mx.array, eps: float) -> mx.array:
    """HiFT's Snake, x + 1/(alpha + eps) * sin^2(alpha x) per channel (last axis), in fp32 numpy:
    MLX's CPU sin runs one scalar at a time (~120 ms of a 270 ms HiFT call at 18 frames)."""
    xf = numpy_f32(x)
    a = numpy_f32(alpha)
    t = xf * a
    np.sin(t, out=t)
    np.square(t, out=t)
    t *= 1.0 / (a + np.float32(eps))
    t += xf
    return mx.array(t).astype(x.dtype)


# Rational approximation of erf on [-4, 4] (erf is 1 to fp32 precision beyond): x P(x^2) / Q(x^2).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _horner(coeffs, x: mx.array) -> mx.array:
    y = coeffs[0]
    for c in coeffs[1:]:
        y = y * x + c
    return y


@partial(mx.compile, shapeless=True)  # elementwise: one compiled kernel for every window length
def _gelu_rational(x: mx.array) -> mx.array:
    z = mx.clip(x * 0.7071067811865476, -4.0, 4.0)
    z2 = z * z
    return 0.5 * x * (1.0 + z * _horner(_ERF_P, z2) / _horner(_ERF_Q, z2))


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU."""
    if not on_cpu():
        return nn.gelu(x)
    return _gelu_rational(x.astype(mx.float32)).astype(x.dtype)  # fp32: the coefficients underflow fp16


# MLX's CPU kernels with fp16 inputs are slow: an fp16 matmul or a quantized matmul of many rows
# runs ~40x slower than fp32 BLAS (828 x 256 x 1024: 485 / 640 ms against 11 ms), and a quantized
# matrix-vector product with fp16 activations ~25x slower than with fp32 ones (2 x 1024 x 4096:
# ~330 against ~13 ms). Reduced-precision components therefore use these Linear layers, which on
# the CPU compute in fp32 from the stored fp16/quantized weights: products of >= BLAS_MIN_ROWS rows
# cast or dequantize the weight for that one BLAS product (a transient copy; the stored weights stay
# small), fewer rows (T3 decode) run MLX's quantized kernel on fp32 activations. Other devices are
# unchanged.
BLAS_MIN_ROWS = 16

F32 = mx.float32


def _rows(x: mx.array) -> int:
    return x.size // x.shape[-1]


def _finish(layer: nn.Module, y: mx.array, dtype: mx.Dtype) -> mx.array:
    """The fp32 product plus the layer's bias, back in the activations' dtype."""
    if "bias" in layer:
        y = y + layer.bias.astype(F32)
    return y.astype(dtype)


# Decode-sized products (T3: 1 row, 2 with CFG) reach MLX's CPU matmul as sgemm, which packs the
# whole weight first: 2 x 1024 x 4096 streams ~3 GB/s. They run as sgemv instead: on the preloaded
# OpenBLAS when there is one (_mlx_openblas), else numpy's, the rows of a weight block multiplied by
# every input row while the block sits in L2, the blocks split over two threads (numpy releases the GIL).
GEMV_MAX_ROWS = 4
GEMV_BLOCK_BYTES = 1 << 19  # a block of fp32 weight rows that stays in a 1 MB L2


def _gemv_part(w: np.ndarray, x: np.ndarray, out: np.ndarray, start: int, end: int) -> None:
    if x.shape[0] == 1:
        np.dot(w[start:end], x[0], out=out[0, start:end])
        return
    step = max(16, GEMV_BLOCK_BYTES // (4 * w.shape[1]))
    for s in range(start, end, step):
        e = min(s + step, end)
        for r in range(x.shape[0]):
            np.dot(w[s:e], x[r], out=out[r, s:e])


CBLAS_ROW_MAJOR, CBLAS_NO_TRANS = 101, 111


@lru_cache(maxsize=1)
def _mlx_openblas():
    """The OpenBLAS that MLX's CPU matmuls run on when it is preloaded (Linux, see blas.py), through
    ctypes; None otherwise. Its sgemv uses MLX's own thread pool, whose workers spin between calls:
    our split over two Python threads waited on each hand-off (96 a GPT-2 medium step), and numpy's
    own OpenBLAS pool spins on after its calls and slowed the MLX work that followed."""
    paths = [p for p in os.environ.get("LD_PRELOAD", "").split() if "openblas" in p]
    try:
        lib = ctypes.CDLL(paths[0]) if paths else None
    except OSError:
        return None
    if lib is None or not hasattr(lib, "cblas_sgemv"):
        return None
    c_int, c_float, c_ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p  # LP64: 32-bit ints
    lib.cblas_sgemv.restype = None
    lib.cblas_sgemv.argtypes = [c_int, c_int, c_int, c_int, c_float, c_ptr, c_int, c_ptr, c_int, c_float, c_ptr, c_int]
    return lib


def gemv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T for a few fp32 rows x (R, I) and an fp32 weight w (O, I)."""
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    lib = _mlx_openblas()
    if lib is not None and x.dtype == w.dtype == np.float32 and w.flags.c_contiguous and x.flags.c_contiguous:
        # One sgemv per row: a second row finds the weight in L3 (<= 16 MB here).
        O, I = w.shape
        for r in range(x.shape[0]):
            lib.cblas_sgemv(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, O, I, 1.0, w.ctypes.data, I, x[r].ctypes.data, 1, 0.0,
                            out[r].ctypes.data, 1)
        return out
    with _own_threads():
        _split(w.shape[0], lambda lo, hi: _gemv_part(w, x, out, lo, hi), w.shape[0] >= 512)
    return out


class BlasLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        if self.weight.dtype == F32 and _rows(x) <= GEMV_MAX_ROWS:
            y = gemv(numpy_f32(x).reshape(-1, x.shape[-1]), self._numpy_weight())
            return _finish(self, mx.array(y).reshape(*x.shape[:-1], -1), x.dtype)
        if x.dtype == F32 and self.weight.dtype == F32:
            return super().__call__(x)
        return _finish(self, x.astype(F32) @ self.weight.astype(F32).T, x.dtype)

    def _numpy_weight(self) -> np.ndarray:
        """A zero-copy numpy view of the weight, remade only when the weight array is replaced."""
        cached = self.__dict__.get("_np_view")
        if cached is None or cached[0] is not self.weight:
            cached = (self.weight, np.asarray(self.weight))
            self.__dict__["_np_view"] = cached
        return cached[1]


class BlasQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        biases = self.get("biases")
        biases = None if biases is None else biases.astype(F32)
        if _rows(x) >= BLAS_MIN_ROWS:
            w = mx.dequantize(self.weight, self.scales.astype(F32), biases, group_size=self.group_size,
                              bits=self.bits, mode=self.mode)
            y = x.astype(F32) @ w.T
        else:
            y = mx.quantized_matmul(x.astype(F32), self.weight, self.scales.astype(F32), biases, transpose=True,
                                    group_size=self.group_size, bits=self.bits, mode=self.mode)
        return _finish(self, y, x.dtype)


def use_blas_linears(module: nn.Module) -> None:
    """Gives every Linear / QuantizedLinear in `module` the CPU fast path above, in place."""
    for _, m in module.named_modules():
        # Same attributes and parameters, one overridden __call__: retyping keeps the loaded arrays.
        if type(m) is nn.Linear:
            m.__class__ = BlasLinear
        elif type(m) is nn.QuantizedLinear:
            m.__class__ = BlasQuantizedLinear
