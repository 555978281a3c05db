"""verify's S3Gen half: the flow and HiFT packages through the MIL interpreter against MLX.

Same inputs on both sides: the chunk's tokens, prompt mel, x-vector and CFM noise for the flow;
the MLX flow's mel, SineGen phases/noise and a nonzero start phase (the streaming case) for HiFT.
Structure: only the op types the exporter emits, no random ops, static input shapes, per-package
precision (the HiFT body has no fp32 op, source and tail no fp16 arithmetic), and on the GPU
target every quantized flow linear is a blockwise constexpr with MLX's codes.
"""

import hashlib
from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from nightingale_mlx.audio.stft import stft
from nightingale_mlx.quality import snr_db

from .hift_package import BODY, SOURCE, TAIL
from .mil_interpreter import Interpreter
from .t3_package import module_path

MIN_SNR_DB = 30.0
DUPLICATE_MIN_ELEMENTS = 1024  # smaller consts (scalars, shapes, tiny biases) may repeat harmlessly
COMMON_OPS = {"const", "cast", "add", "sub", "mul", "real_div", "reshape", "expand_dims", "squeeze", "concat",
              "slice_by_index", "conv", "pad", "identity"}
FLOW_OPS = COMMON_OPS | {"constexpr_blockwise_shift_scale", "gather", "transpose", "tile", "layer_norm", "matmul",
                         "softmax", "silu", "gelu", "softplus", "tanh", "leaky_relu", "reduce_sum", "sqrt",
                         "maximum", "linear"}
HIFT_OPS = COMMON_OPS | {"elu", "abs", "floor", "cumsum", "sin", "cos", "exp", "minimum", "greater", "reduce_sum",
                         "tanh", "leaky_relu", "conv_transpose", "clip"}


def _dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype) if var.dtype is not None else "?"


def structure(interp: Interpreter, allowed: set, quantized_paths: set = frozenset()) -> dict:
    """Op types, random ops, dynamic input shapes, arithmetic dtypes and blockwise weights of `main`."""
    fn = interp.program.functions["main"]
    types = interp.op_types("main")
    producers = {op.outputs[0].name: op for op in fn.operations if op.outputs}
    not_blockwise = []
    for op in fn.operations:
        w = op.inputs.get("weight") if op.op_type in ("conv", "linear") else \
            op.inputs.get("x") if op.op_type == "gather" else None
        src = producers.get(w.name) if w is not None else None
        if src is None or src.op_type == "constexpr_blockwise_shift_scale":
            continue
        path = module_path(src.name.removesuffix("__2d"))
        if path in quantized_paths:
            not_blockwise.append(path)
    # A weight written twice (e.g. once per unrolled Euler step) would multiply the package size.
    weights = [op.outputs[0].val for op in fn.operations if op.op_type == "const"]
    digests = Counter(hashlib.sha1(np.ascontiguousarray(w).tobytes()).hexdigest() for w in weights
                      if isinstance(w, np.ndarray) and w.size >= DUPLICATE_MIN_ELEMENTS)
    arithmetic = Counter(_dtype_name(op.outputs[0]) for op in fn.operations
                         if op.outputs and not op.op_type.startswith("const") and op.op_type != "cast")
    return {"ops": len(types), "op_counts": dict(Counter(types)),
            "unexpected_ops": sorted({t for t in types if t not in allowed}),
            "random_ops": sorted({t for t in types if t.startswith("random")}),
            "dynamic_shapes": [n for n, v in fn.inputs.items()
                               if any(not isinstance(d, (int, np.integer)) for d in v.shape)],
            "arithmetic_dtypes": dict(arithmetic), "linears_not_blockwise": sorted(set(not_blockwise)),
            "blockwise_ops": types.count("constexpr_blockwise_shift_scale"),
            "duplicate_weights": sum(n - 1 for n in digests.values())}


def structure_ok(s: dict) -> bool:
    return not (s["unexpected_ops"] or s["random_ops"] or s["dynamic_shapes"] or s["linears_not_blockwise"]
                or s["duplicate_weights"])


def flow_inputs(flow, entry: dict, seed: int = 0) -> dict:
    """A chunk: W random tokens whose first half is the prompt (with its mel), x-vector, CFM noise."""
    cfg, W, T = flow.cfg, entry["chunk_tokens"], entry["chunk_frames"]
    rng = np.random.default_rng(seed)
    P = W // 2
    return {"tokens": rng.integers(0, cfg.vocab_size, (1, W)).astype(np.int32),
            "prompt_feat": (rng.standard_normal((1, cfg.token_mel_ratio * P, cfg.output_size)) * 2 - 5)
            .astype(np.float16).astype(np.float32),
            "embedding": rng.standard_normal((1, cfg.spk_embed_dim)).astype(np.float32),
            # fp16-exact noise: the MLX runtime draws it in the flow's dtype (fp16 when quantized)
            "noise": rng.standard_normal((1, T, cfg.output_size)).astype(np.float16).astype(np.float32)}


def flow_reference(flow, inputs: dict, n_timesteps: int) -> np.ndarray:
    """The MLX runtime's chunk (streaming.py `_render_mel`): prepare + CFM solve -> (T, 80)."""
    P = inputs["prompt_feat"].shape[1] // flow.cfg.token_mel_ratio
    tokens = mx.array(inputs["tokens"])
    mu, spks, cond = flow.prepare(tokens[:, P:], tokens[:, :P], mx.array(inputs["prompt_feat"]),
                                  mx.array(inputs["embedding"]))
    x = None
    for x in flow.decoder.solve(mx.array(inputs["noise"]).astype(mu.dtype), mu, spks, cond, n_timesteps):
        pass
    return np.array(x.astype(mx.float32))[0]


def flow_numerics(interp: Interpreter, flow, entry: dict, seed: int = 0):
    """Chunk mel SNR of the package against MLX; returns (report, MLX mel (T, 80))."""
    inputs = flow_inputs(flow, entry, seed)
    ref = flow_reference(flow, inputs, entry["n_timesteps"])
    T, M = entry["chunk_frames"], flow.cfg.output_size
    cond = np.zeros((1, M, T), np.float16)
    cond[0, :, : inputs["prompt_feat"].shape[1]] = inputs["prompt_feat"][0].T
    got = interp.run("main", tokens=inputs["tokens"], cond=cond, embedding=inputs["embedding"],
                     noise=inputs["noise"].transpose(0, 2, 1))["mel"][0].T
    first = inputs["prompt_feat"].shape[1]
    report = {"chunk_frames": T, "mel_snr_db": snr_db(ref, got),
              "generated_frames_snr_db": snr_db(ref[first:], got[first:]),
              "max_abs_err": float(np.abs(got - ref).max()), "target_db": MIN_SNR_DB}
    report["ok"] = bool(report["mel_snr_db"] >= MIN_SNR_DB)
    return report, ref


def hift_numerics(interps: dict, hift, entry: dict, mel: np.ndarray, seed: int = 0) -> dict:
    """Waveform SNR of source -> body -> tail against MLX's HiFT on the same mel, phases and noise."""
    T, N = entry["frames"], entry["samples"]
    H = hift.m_source.n_harmonics
    rng = np.random.default_rng(seed + 1)
    mel = np.concatenate([mel] * (-(-T // len(mel))))[:T][None].astype(np.float32)  # (1, T, 80)
    phases = rng.uniform(-np.pi, np.pi, (1, H)).astype(np.float32)
    noise = rng.standard_normal((1, N, H)).astype(np.float32)
    start = rng.uniform(0, 1, (1, H)).astype(np.float32)  # a stream's later window
    mel_mx = mx.array(mel)
    f0_ref = hift.predict_f0(mel_mx)
    source = hift.m_source(f0_ref, phases=mx.array(phases), noise=mx.array(noise), start_cycles=mx.array(start))
    wav_ref = np.array(hift.decode(mel_mx, source))[0]
    spec = stft(source[..., 0], hift.cfg.istft_n_fft, hift.cfg.istft_hop, hift._window)
    stft_ref = np.concatenate([np.array(spec.real), np.array(spec.imag)], axis=-1)[0].T
    mel_t = mel.transpose(0, 2, 1)
    src = interps[SOURCE].run("main", mel=mel_t, phases=phases, sine_noise=noise.transpose(0, 2, 1),
                              start_cycles=start)
    features = interps[BODY].run("main", mel=mel_t, source_stft=src["source_stft"])["features"]
    wav = interps[TAIL].run("main", features=features)["wav"][0]
    f0 = np.array(f0_ref)
    report = {"frames": T, "wav_snr_db": snr_db(wav_ref, wav),
              "source_stft_snr_db": snr_db(stft_ref, src["source_stft"][0]),
              "f0_max_rel_err": float(np.abs(src["f0"] - f0).max() / max(np.abs(f0).max(), 1e-9)),
              "clipped_fraction": float(np.mean(np.abs(wav_ref) >= hift.cfg.audio_limit)), "target_db": MIN_SNR_DB}
    report["ok"] = bool(report["wav_snr_db"] >= MIN_SNR_DB)
    return report


def verify_s3gen(bundle: Path, manifest: dict, s3gen, codes) -> dict:
    """The `s3gen` section of verify's report; `codes(interp, model)` is verify's bit-for-bit code check."""
    entry = manifest["s3gen"]
    quantized = {p for p, m in s3gen.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    flow_interp = Interpreter(bundle / entry["flow"]["package"])
    gpu_blockwise = entry["flow"]["quantization"]["bits"] in (4, 8)
    flow_struct = structure(flow_interp, FLOW_OPS, quantized if gpu_blockwise else frozenset())
    flow_num, mel = flow_numerics(flow_interp, s3gen.flow, entry["flow"])
    hift_entry = entry["hift"]
    interps = {name: Interpreter(bundle / p["package"]) for name, p in hift_entry["packages"].items()}
    hift_struct = {name: structure(it, HIFT_OPS) for name, it in interps.items()}
    T = entry["flow"]["chunk_frames"]
    first = T - min(T, hift_entry["frames"])
    hift_num = hift_numerics(interps, s3gen.mel2wav, hift_entry, mel[first:])
    precision_ok = (set(hift_struct[BODY]["arithmetic_dtypes"]) <= {"fp16", "bool"}
                    and "fp16" not in hift_struct[SOURCE]["arithmetic_dtypes"]
                    and "fp16" not in hift_struct[TAIL]["arithmetic_dtypes"]
                    and (gpu_blockwise or flow_struct["blockwise_ops"] == 0))
    flow_codes = codes(flow_interp, s3gen) if gpu_blockwise else None
    report = {"flow": {"structure": flow_struct, "numerics": flow_num, "codes": flow_codes},
              "hift": {"structure": hift_struct, "numerics": hift_num}, "precision_ok": precision_ok}
    report["ok"] = bool(flow_num["ok"] and hift_num["ok"] and precision_ok and structure_ok(flow_struct)
                        and all(structure_ok(s) for s in hift_struct.values())
                        and (flow_codes is None or flow_codes["codes_equal"]))
    return report
