"""A numpy evaluator for the MIL ops that ios_export emits, run on SAVED .mlpackage files.

Nothing executes a Core ML package on Linux (COREML_NOTES §4), so the verification reloads the
saved package (spec + weight blobs) into a pymil program with coremltools' own milproto loader
and walks its operations. Every op's result is stored in its declared dtype, so fp16 activations
round exactly where the device would store them; arithmetic on fp16 values runs in fp32 (the GPU
accumulates in fp32; the ANE's fp16 accumulation is not emulated). States live in a dict that
`read_state`/`coreml_update_state` read and write, so KV caches persist across calls.
"""

from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

WEIGHTS_DIR = Path("Data") / "com.apple.CoreML" / "weights"


class InterpreterError(ValueError):
    """A package or op this interpreter cannot run."""


def load_program(package):
    """The pymil Program of a saved .mlpackage (all functions), via coremltools' loader."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    package = Path(package)
    if not (package / "Manifest.json").is_file():
        raise InterpreterError(f"{package}: not a saved .mlpackage")
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    return load(spec, specification_version=spec.specificationVersion,
                file_weights_dir=str(package / WEIGHTS_DIR))


def _np_dtype(builtin):
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(builtin)


def _f(x):
    """Compute dtype: fp16 values are computed in fp32 (stored back in fp16 afterwards)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sdpa(a):
    q, k, v = _f(a["query"]), _f(a["key"]), _f(a["value"])
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    mask = a.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + _f(mask)
    return _softmax(scores, -1) @ v


def _slice(a):
    x = a["x"]
    begin, end = [int(b) for b in a["begin"]], [int(e) for e in a["end"]]
    stride = a.get("stride")
    stride = [1] * x.ndim if stride is None else [int(s) for s in stride]
    bm = a.get("begin_mask") if a.get("begin_mask") is not None else [False] * x.ndim
    em = a.get("end_mask") if a.get("end_mask") is not None else [False] * x.ndim
    sq = a.get("squeeze_mask") if a.get("squeeze_mask") is not None else [False] * x.ndim
    index = []
    for d in range(x.ndim):
        if sq[d]:
            index.append(begin[d])
        else:
            index.append(slice(None if bm[d] else begin[d], None if em[d] else end[d], stride[d]))
    return tuple(index)


def _slice_update(a):
    out = np.array(a["x"], copy=True)
    out[_slice(a)] = a["update"]
    return out


def _blockwise(a):
    data = np.asarray(a["data"]).astype(np.float64)
    scale = np.asarray(a["scale"]).astype(np.float64)
    offset = a.get("offset")
    reps = [d // s for d, s in zip(data.shape, scale.shape)]
    expand = lambda t: np.kron(t, np.ones(reps)) if t.ndim <= 2 else _repeat(t, reps)  # noqa: E731
    if offset is not None:
        data = data - expand(np.asarray(offset).astype(np.float64))
    return expand(scale) * data


def _repeat(t, reps):
    for axis, r in enumerate(reps):
        t = np.repeat(t, r, axis=axis)
    return t


def _reduce(fn):
    return lambda a: fn(_f(a["x"]), axis=None if a.get("axes") is None else tuple(int(i) for i in a["axes"]),
                        keepdims=bool(a.get("keep_dims", False)))


def _binary(fn):
    return lambda a: fn(_f(a["x"]), _f(a["y"]))


OPS: Dict[str, Callable[[dict], np.ndarray]] = {
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "pow": _binary(np.power), "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "equal": _binary(np.equal), "not_equal": _binary(np.not_equal), "less": _binary(np.less),
    "less_equal": _binary(np.less_equal), "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "logical_and": _binary(np.logical_and), "logical_or": _binary(np.logical_or),
    "logical_not": lambda a: np.logical_not(a["x"]),
    "exp": lambda a: np.exp(_f(a["x"])), "sin": lambda a: np.sin(_f(a["x"])),
    "cos": lambda a: np.cos(_f(a["x"])), "tanh": lambda a: np.tanh(_f(a["x"])),
    "sqrt": lambda a: np.sqrt(_f(a["x"])), "square": lambda a: np.square(_f(a["x"])),
    "abs": lambda a: np.abs(_f(a["x"])), "floor": lambda a: np.floor(_f(a["x"])),
    "rsqrt": lambda a: 1.0 / np.sqrt(_f(a["x"]) + float(a.get("epsilon", 1e-12))),
    "inverse": lambda a: 1.0 / (_f(a["x"]) + float(a.get("epsilon", 1e-4))),
    "log": lambda a: np.log(_f(a["x"]) + float(a.get("epsilon", 0.0))),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-_f(a["x"]))),
    "silu": lambda a: _f(a["x"]) / (1.0 + np.exp(-_f(a["x"]))),
    "relu": lambda a: np.maximum(_f(a["x"]), 0),
    "leaky_relu": lambda a: np.where(_f(a["x"]) >= 0, _f(a["x"]), float(a["alpha"]) * _f(a["x"])),
    "clip": lambda a: np.clip(_f(a["x"]), float(a["alpha"]), float(a["beta"])),
    "softmax": lambda a: _softmax(_f(a["x"]), int(a["axis"])),
    "cast": lambda a: np.asarray(a["x"]),
    "identity": lambda a: np.asarray(a["x"]),
    "select": lambda a: np.where(a["cond"], _f(a["a"]), _f(a["b"])),
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum), "reduce_max": _reduce(np.max),
    "cumsum": lambda a: _cumsum(a),
    "linear": lambda a: _f(a["x"]) @ _f(a["weight"]).T + (0 if a.get("bias") is None else _f(a["bias"])),
    "matmul": lambda a: _matmul(a),
    "conv": lambda a: _conv(a),
    "conv_transpose": lambda a: _conv_transpose(a),
    "layer_norm": lambda a: _layer_norm(a),
    "gelu": lambda a: _gelu(a),
    "softplus": lambda a: np.logaddexp(0.0, _f(a["x"])),
    "elu": lambda a: np.where(_f(a["x"]) > 0, _f(a["x"]), float(a.get("alpha", 1.0)) * np.expm1(_f(a["x"]))),
    "scaled_dot_product_attention": _sdpa,
    "reshape": lambda a: np.reshape(a["x"], [int(s) for s in a["shape"]]),
    "transpose": lambda a: np.transpose(a["x"], [int(p) for p in a["perm"]]),
    "expand_dims": lambda a: np.expand_dims(a["x"], tuple(int(i) for i in a["axes"])),
    "squeeze": lambda a: np.squeeze(a["x"], None if a.get("axes") is None else tuple(int(i) for i in a["axes"])),
    "concat": lambda a: np.concatenate(a["values"], axis=int(a["axis"])),
    "stack": lambda a: np.stack(a["values"], axis=int(a["axis"])),
    "tile": lambda a: np.tile(a["x"], [int(r) for r in a["reps"]]),
    "gather": lambda a: np.take(a["x"], np.asarray(a["indices"]).astype(np.int64), axis=int(a["axis"])),
    "slice_by_index": lambda a: np.asarray(a["x"])[_slice(a)],
    "slice_update": _slice_update,
    "range_1d": lambda a: np.arange(a["start"], a["end"], a["step"]),
    "fill": lambda a: np.full([int(s) for s in a["shape"]], a["value"]),
    "pad": lambda a: _pad(a),
    "constexpr_blockwise_shift_scale": _blockwise,
}


def _matmul(a):
    x, y = _f(a["x"]), _f(a["y"])
    if a.get("transpose_x"):
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y"):
        y = np.swapaxes(y, -1, -2)
    return x @ y


def _spatial(a, x, w):
    """Conv args on 1-D signals: (N, C, L) or (N, C, 1, L) with (.., 1, K) kernels; returns pads too."""
    rank = x.ndim
    if rank == 4:
        if x.shape[2] != 1 or w.shape[2] != 1:
            raise InterpreterError("conv: only (N, C, 1, L) inputs with (1, K) kernels are supported")
        x, w = x[:, :, 0], w[:, :, 0]
    elif rank != 3:
        raise InterpreterError(f"conv: rank {rank} inputs are not supported")
    last = lambda key, default: int(default if a.get(key) is None else list(a[key])[-1])  # noqa: E731
    stride, dilation = last("strides", 1), last("dilations", 1)
    pad_type = str(a.get("pad_type", "valid"))
    if pad_type == "custom":
        pad = [int(p) for p in a["pad"]][-2:]
    elif pad_type == "valid":
        pad = [0, 0]
    else:
        raise InterpreterError(f"conv: pad_type {pad_type!r} is not supported")
    if int(a.get("groups", 1) or 1) != 1:
        raise InterpreterError("conv: grouped convolutions are not supported")
    return x, w, stride, dilation, pad, rank


def _conv(a):
    """Cross-correlation as one matmul per tap (fp32 accumulation, as the GPU)."""
    x, w, stride, dilation, pad, rank = _spatial(a, _f(a["x"]), _f(a["weight"]))
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1])))
    K = w.shape[-1]
    length = (x.shape[-1] - dilation * (K - 1) - 1) // stride + 1
    out = 0.0
    for k in range(K):
        tap = x[:, :, k * dilation: k * dilation + stride * (length - 1) + 1: stride]  # (N, I, length)
        out = out + np.matmul(w[:, :, k], tap)
    if a.get("bias") is not None:
        out = out + _f(a["bias"])[:, None]
    return out[:, :, None] if rank == 4 else out


def _conv_transpose(a):
    """Each input sample scatters K taps at stride s; then `pad` is cropped from both ends."""
    x, w, stride, dilation, pad, rank = _spatial(a, _f(a["x"]), _f(a["weight"]))
    N, _, L = x.shape
    K = w.shape[-1]
    out = np.zeros((N, w.shape[1], (L - 1) * stride + dilation * (K - 1) + 1), np.float32)
    for k in range(K):
        out[:, :, k * dilation: k * dilation + stride * (L - 1) + 1: stride] += np.matmul(w[:, :, k].T, x)
    out = out[:, :, pad[0]: out.shape[-1] - pad[1]]
    if a.get("bias") is not None:
        out = out + _f(a["bias"])[:, None]
    return out[:, :, None] if rank == 4 else out


def _layer_norm(a):
    x = _f(a["x"])
    axes = tuple(range(x.ndim)) if a.get("axes") is None else tuple(int(i) % x.ndim for i in a["axes"])
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]  # gamma has shape x.shape[axes]
    if a.get("gamma") is not None:
        y = y * _f(a["gamma"]).reshape(shape)
    if a.get("beta") is not None:
        y = y + _f(a["beta"]).reshape(shape)
    return y


def _erf(x):
    """Abramowitz & Stegun 7.1.26 in float64: |error| <= 1.5e-7, below fp32 storage of GELU's output."""
    x = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(a):
    x = _f(a["x"])
    mode = str(a.get("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    return x / (1.0 + np.exp(-1.702 * x))


def _cumsum(a):
    x, axis = _f(a["x"]), int(a["axis"])
    if a.get("reverse"):
        x = np.flip(x, axis)
    out = np.cumsum(x.astype(np.float64), axis=axis)  # fp32 on device; float64 here bounds our drift
    if a.get("exclusive"):
        out = out - x
    return np.flip(out, axis) if a.get("reverse") else out


def _pad(a):
    x, pad = a["x"], [int(p) for p in a["pad"]]
    widths = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(x, widths, constant_values=float(a.get("constant_val", 0.0)))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def _value(var, env):
    if var.name in env:
        return env[var.name]
    if var.val is not None:
        return var.val
    raise InterpreterError(f"value of {var.name} is not computed yet")


class Interpreter:
    """Runs the functions of one saved package; `states` persist across `run` calls."""

    def __init__(self, package, trace: Optional[Callable] = None):
        self.program = load_program(package)
        self.states: Dict[str, np.ndarray] = {}
        self._constexpr: Dict[str, np.ndarray] = {}  # decoded weights, shared by every call
        self.trace = trace

    @property
    def function_names(self):
        return list(self.program.functions)

    def reset_states(self) -> None:
        self.states.clear()

    def op_types(self, function: str):
        return [op.op_type for op in self.program.functions[function].operations]

    def run(self, function: str, **inputs) -> Dict[str, np.ndarray]:
        """Runs `function` on numpy inputs; returns its outputs by name."""
        fn = self.program.functions.get(function)
        if fn is None:
            raise InterpreterError(f"no function {function!r}; the package has {self.function_names}")
        env: Dict[str, np.ndarray] = {}
        for name, var in fn.inputs.items():
            dtype = _np_dtype(var.dtype)
            if _is_state(var):
                if name not in self.states:
                    self.states[name] = np.zeros(var.shape, dtype)  # Core ML states start zeroed
                env[name] = self.states[name]
                continue
            if name not in inputs:
                raise InterpreterError(f"{function}: missing input {name!r}")
            value = np.asarray(inputs[name]).astype(dtype)
            if tuple(value.shape) != tuple(var.shape):
                raise InterpreterError(f"{function}: input {name} has shape {value.shape}, expected {var.shape}")
            env[name] = value
        for op in fn.operations:
            self._run_op(op, env)
        return {var.name: env[var.name] for var in fn.outputs}

    def _run_op(self, op, env) -> None:
        out = op.outputs[0] if op.outputs else None
        if op.op_type == "const":
            env[out.name] = np.asarray(out.val)
            return
        if op.op_type.startswith("constexpr_") and out.name in self._constexpr:
            env[out.name] = self._constexpr[out.name]
            return
        args = {}
        for key, var in op.inputs.items():
            args[key] = [_value(v, env) for v in var] if isinstance(var, (list, tuple)) else _value(var, env)
        if op.op_type == "read_state":
            result = self.states[op.inputs["input"].name]
        elif op.op_type in ("coreml_update_state", "write_state"):
            state = op.inputs["state" if "state" in op.inputs else "input"].name
            self.states[state] = np.asarray(args["value"]).astype(self.states[state].dtype)
            result = self.states[state]
        elif op.op_type in OPS:
            result = OPS[op.op_type](args)
        else:
            raise InterpreterError(f"op {op.op_type!r} ({op.name}) is not supported by the MIL interpreter")
        if out is not None:
            value = np.asarray(result).astype(_np_dtype(out.dtype))  # storage in the declared dtype
            env[out.name] = value
            if op.op_type.startswith("constexpr_"):
                # Kept upcast (exactly) so each call does not re-convert hundreds of MB of weights.
                value = _f(value)
                self._constexpr[out.name] = env[out.name] = value
            if self.trace is not None:
                self.trace(op, value)


def _is_state(var) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_state(var.sym_type)
