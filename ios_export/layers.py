"""MIL building blocks shared by the S3Gen packages (flow, HiFT), in the Neural Engine layout.

Activations are (B, C, 1, T): channels on axis 1, time last (ANE "width"), so every Linear is a
1x1 conv2d and every Conv1d a (1, K) conv2d (COREML_NOTES §1.3, §3.1). `dtype` is the storage
dtype of activations and weights; `fp32_islands` computes layer norms and softmax in fp32 (the GPU
package) instead of fp16 throughout (the ANE package). Quantized MLX Linear/Embedding weights are
emitted as `constexpr_blockwise_shift_scale` from MLX's own codes (`blockwise=True`), or as MLX's
own fp16 dequantization (the ANE rejects per-block scales).
"""

from typing import Dict, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .t3_package import quantized_weight, weight_op_name

NP_DTYPES = {"fp16": np.float16, "fp32": np.float32}


def _np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def dense_weight(module: nn.Module) -> np.ndarray:
    """The fp32 (O, I) matrix MLX multiplies by (its own dequantization for quantized layers)."""
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return _np(mx.dequantize(module.weight, module.scales, module.biases,
                                 group_size=module.group_size, bits=module.bits))
    return _np(module.weight)


class Layers:
    """Emits ops into the MIL function being built; weight consts are created once per module."""

    def __init__(self, mb, dtype: str = "fp16", fp32_islands: bool = True, blockwise: bool = True):
        self.mb, self.dtype, self.fp32_islands, self.blockwise = mb, dtype, fp32_islands, blockwise
        self.np_dtype = NP_DTYPES[dtype]
        self._weights: Dict[str, object] = {}

    # --- weights -------------------------------------------------------------------------
    def const(self, value: np.ndarray, dtype: Optional[str] = None):
        return np.asarray(value, np.float32).astype(NP_DTYPES[dtype or self.dtype])

    def matrix(self, module: nn.Module, path: str, rank4: bool = True):
        """An (O, I) Linear/Embedding weight, as (O, I, 1, 1) for a 1x1 conv when `rank4`."""
        key = f"{path}:{rank4}"
        if key in self._weights:
            return self._weights[key]
        name = weight_op_name(path) + ("" if rank4 else "__2d")
        quantized = isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        if quantized and self.blockwise and self.dtype == "fp16":
            from coremltools.converters.mil.mil import types

            q = quantized_weight(module)
            shape4 = (lambda a: a[:, :, None, None]) if rank4 else (lambda a: a)
            data = q.codes.astype(types.np_uint4_dtype if q.bits == 4 else np.uint8)
            var = self.mb.constexpr_blockwise_shift_scale(data=shape4(data), scale=shape4(q.scale),
                                                         offset=shape4(q.offset), name=name)
        else:
            w = self.const(dense_weight(module))
            var = self.mb.const(val=w[:, :, None, None] if rank4 else w, name=name)
        self._weights[key] = var
        return var

    def param(self, module: nn.Module, tag: str, make, dtype: Optional[str] = None):
        """A const made from `module` once per function: the unrolled CFM reuses one weight in every step."""
        key = f"{id(module)}:{tag}:{dtype or self.dtype}"
        if key not in self._weights:
            self._weights[key] = self.mb.const(val=self.const(make(), dtype))
        return self._weights[key]

    def bias(self, module: nn.Module):
        if module.get("bias") is None:  # an mlx Module is a dict of its parameters
            return None
        return self.param(module, "bias", lambda: _np(module.bias))

    # --- layers (x is (B, C, 1, T)) ----------------------------------------------------------
    def linear(self, x, module: nn.Module, path: str):
        """A Linear over channels as a 1x1 conv."""
        kw = {} if self.bias(module) is None else {"bias": self.bias(module)}
        return self.mb.conv(x=x, weight=self.matrix(module, path), **kw)

    def conv(self, x, module: nn.Module, pad=(0, 0), stride: int = 1, dilation: int = 1):
        """An MLX Conv1d (weight (O, K, I)) as a (1, K) conv2d with explicit time padding."""
        w = self.param(module, "conv", lambda: _np(module.weight).transpose(0, 2, 1)[:, :, None, :])  # (O, I, 1, K)
        kw = {} if self.bias(module) is None else {"bias": self.bias(module)}
        return self.mb.conv(x=x, weight=w, strides=[1, stride], dilations=[1, dilation],
                            pad_type="custom", pad=[0, 0, int(pad[0]), int(pad[1])], **kw)

    def conv_transpose(self, x, module: nn.Module, stride: int, padding: int):
        """MLX ConvTranspose1d (weight (O, K, I)) as conv_transpose (weight (I, O, 1, K))."""
        w = self.param(module, "conv_transpose", lambda: _np(module.weight).transpose(2, 0, 1)[:, :, None, :])
        return self.mb.conv_transpose(x=x, weight=w, bias=self.bias(module), strides=[1, stride],
                                      pad_type="custom", pad=[0, 0, padding, padding])

    def cast(self, x, dtype: str):
        return x if x.dtype == _builtin(dtype) else self.mb.cast(x=x, dtype=dtype)

    def layer_norm(self, x, module: nn.LayerNorm):
        """LayerNorm over channels (axis 1); in fp32 when fp32 islands are on (variance of fp16 overflows)."""
        dt = "fp32" if self.fp32_islands else self.dtype
        y = self.mb.layer_norm(x=self.cast(x, dt), axes=[1], gamma=self.param(module, "gamma", lambda: _np(module.weight), dt),
                               beta=self.param(module, "beta", lambda: _np(module.bias), dt),
                               epsilon=self.epsilon(module.eps, dt))
        return self.cast(y, self.dtype)

    @staticmethod
    def epsilon(eps: float, dtype: str):
        """eps typed like the op; in fp16 1e-12 would flush to 0, so it becomes the smallest subnormal."""
        if dtype == "fp32":
            return np.float32(eps)
        return np.float16(max(eps, float(np.finfo(np.float16).smallest_subnormal)))

    def softmax(self, scores):
        dt = "fp32" if self.fp32_islands else self.dtype
        return self.cast(self.mb.softmax(x=self.cast(scores, dt), axis=-1), self.dtype)

    def channel_const(self, values: np.ndarray, dtype: Optional[str] = None):
        """(C,) -> (1, C, 1, 1) constant that broadcasts over batch and time."""
        return self.const(np.asarray(values).reshape(1, -1, 1, 1), dtype)

    def pad_time(self, x, left: int, right: int, mode: str = "constant"):
        """Pads the last axis; the fill value is typed like x (a saved fp16 pad with an fp32 fill won't load)."""
        fill = np.zeros((), np.float16 if x.dtype == _builtin("fp16") else np.float32)
        return self.mb.pad(x=x, pad=[int(left), int(right)], mode=mode, constant_val=fill)

    def time_slice(self, x, start: int, end: int):
        shape = x.shape
        return self.mb.slice_by_index(x=x, begin=[0, 0, 0, start], end=[shape[0], shape[1], shape[2], end])

    def channel_slice(self, x, start: int, end: int):
        shape = x.shape
        return self.mb.slice_by_index(x=x, begin=[0, start, 0, 0], end=[shape[0], end, shape[2], shape[3]])


def save_program(prog, out_path) -> None:
    """Converts a hand-built program as authored (dtypes kept, no graph passes) and saves it.

    The default pass pipeline takes minutes on an unrolled 10-step CFM and would re-fuse ops
    (e.g. scale into conv weights) that the export already laid out for the device.
    """
    import coremltools as ct

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                       compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY,
                       skip_model_load=True)
    model.save(str(out_path))


def _builtin(dtype: str):
    from coremltools.converters.mil.mil import types

    return {"fp16": types.fp16, "fp32": types.fp32}[dtype]
