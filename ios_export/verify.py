"""`python -m ios_export.verify BUNDLE -m MODEL`: checks a bundle without a Mac, prints JSON.

Numerics: the saved T3 package runs through the numpy MIL interpreter (prefill + decode steps with
its states) against the MLX model on the same inputs; so do the flow (chunk mel SNR) and the three
HiFT packages (waveform SNR), see verify_s3gen.py. Structure: op types, no random ops, blockwise
weights on every quantized linear with MLX's integer codes bit for bit, states, static shapes,
per-package precision, file hashes and sizes.
"""

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from nightingale_mlx import model_io

from .export import MANIFEST, T3_PACKAGE, file_hashes
from .mil_interpreter import Interpreter
from .t3_package import FUNCTION_DECODE, module_path, prefill_name, quantized_weight
from .verify_s3gen import verify_s3gen

T3_OPS = {
    "const", "constexpr_blockwise_shift_scale", "linear", "read_state", "coreml_update_state", "write_state",
    "slice_update", "slice_by_index", "concat", "reshape", "transpose", "gather", "add", "sub", "mul",
    "select", "greater_equal", "less", "less_equal", "logical_and", "cast", "reduce_mean", "rsqrt", "silu",
    "scaled_dot_product_attention", "expand_dims", "squeeze", "tile", "stack",
    "layer_norm", "gelu",  # the GPT-2 T3 (Turbo/Nano)
}
MAX_REL_ERR = 1e-2
DECODE_STEPS = 10


class VerifyError(ValueError):
    """The bundle is not a readable nightingale iOS bundle."""


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def structure(interp: Interpreter, t3, manifest: dict) -> dict:
    """Op types, random ops, blockwise linears, states and static shapes of every function."""
    prog = interp.program
    report = {"functions": {}, "unexpected_ops": [], "random_ops": [], "dynamic_shapes": [],
              "linears_not_blockwise": []}
    quantized = {p for p, m in t3.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    for name, fn in prog.functions.items():
        types = interp.op_types(name)
        report["functions"][name] = {"ops": len(types)}
        report["unexpected_ops"] += sorted({t for t in types if t not in T3_OPS} - set(report["unexpected_ops"]))
        report["random_ops"] += [t for t in types if t.startswith("random")]
        for var in fn.inputs.values():
            if any(not isinstance(d, (int, np.integer)) for d in var.shape):
                report["dynamic_shapes"].append(f"{name}:{var.name}")
        producers = {op.outputs[0].name: op for op in fn.operations if op.outputs}
        for op in fn.operations:
            if op.op_type == "linear":
                w = producers.get(op.inputs["weight"].name)
                path = module_path(w.name) if w is not None else ""
                if path in quantized and w.op_type != "constexpr_blockwise_shift_scale":
                    report["linears_not_blockwise"].append(path)
    states = [n for n, v in prog.functions[FUNCTION_DECODE].inputs.items() if "cache" in n]
    report["states_ok"] = states == manifest["t3"]["states"]["names"]
    return report


def codes(interp: Interpreter, model) -> dict:
    """Compares each blockwise op's codes and scales with the MLX module's, bit for bit.

    Op names are module paths (`weight_op_name`); the flow's 1x1-conv weights are (O, I, 1, 1)."""
    modules = dict(model.named_modules())
    checked, mismatched, max_ulps = 0, [], 0.0
    seen = set()
    for fn in interp.program.functions.values():
        for op in fn.operations:
            if op.op_type != "constexpr_blockwise_shift_scale" or op.name in seen:
                continue
            seen.add(op.name)
            module = modules.get(module_path(op.name.removesuffix("__2d")))
            if module is None:
                mismatched.append(op.name)
                continue
            q = quantized_weight(module)
            data = np.asarray(op.inputs["data"].val).astype(np.uint8)
            rows = data.shape[0]  # GPT-2's wpe keeps its first `context` rows
            data = data.reshape(rows, -1)
            scale = np.asarray(op.inputs["scale"].val).reshape(rows, -1)
            offset = np.asarray(op.inputs["offset"].val).reshape(rows, -1)
            same = rows <= q.codes.shape[0] and np.array_equal(data, q.codes[:rows]) and \
                scale.dtype == np.float16 and np.array_equal(scale.view(np.uint16), q.scale[:rows].view(np.uint16))
            if not same:
                mismatched.append(op.name)
            # Dequantized weights vs MLX's fp16 dequantize: only rounding may differ.
            dense = scale.astype(np.float64)[..., None] * (data.reshape(*scale.shape, -1) - offset[..., None])
            # MLX's s*q + b from the stored scales and biases (fp16, or bf16 for a bf16 T3), in fp32;
            # the unit is the fp16 ulp of the matrix's absmax (the package's weights are fp16).
            f32 = mx.float32
            mlx_dense = np.array(mx.dequantize(module.weight, module.scales.astype(f32), module.biases.astype(f32),
                                               group_size=module.group_size, bits=module.bits))[:rows]
            ulp = float(np.spacing(np.float16(np.abs(mlx_dense).max())))
            diff = np.abs(dense.reshape(mlx_dense.shape) - mlx_dense.astype(np.float64)).max()
            max_ulps = max(max_ulps, float(diff) / ulp)
            checked += 1
    return {"blockwise_ops": checked, "codes_equal": checked > 0 and not mismatched, "mismatched": mismatched,
            "max_dequant_diff_fp16_ulps": max_ulps}


def t3_numerics(interp: Interpreter, t3, manifest: dict, steps: int = DECODE_STEPS, seed: int = 0) -> dict:
    """Prefill + `steps` decodes on random text and tokens: MIL interpreter vs MLX logits."""
    cfg = t3.cfg
    rng = np.random.default_rng(seed)
    T = min(manifest["t3"]["text_slots"])
    L = min(T, 12)
    text = rng.integers(1, cfg.text_vocab_size, (1, L)).astype(np.int32)
    speaker = mx.array(rng.standard_normal((1, cfg.speaker_embed_size)).astype(np.float32))
    prompt = mx.array(rng.integers(0, 6561, (1, 20)).astype(np.int32))
    cond = t3.condition(speaker, prompt, 0.5)
    use_cfg = manifest["t3"].get("cfg", True)  # GPT-2 (Turbo/Nano): one row, no CFG
    cache = t3.make_cache()
    h, _ = t3(t3.prefill_embeddings(cond, mx.array(text), use_cfg), cache)
    ref = [np.array(t3.logits(h))]
    tokens = rng.integers(0, 6561, steps)
    for s, tok in enumerate(tokens):
        h, _ = t3(t3.speech_embedding(mx.array([int(tok)]), s, 2 if use_cfg else 1), cache)
        ref.append(np.array(t3.logits(h)))
    interp.reset_states()
    ids = np.zeros((1, T), np.int32)
    ids[0, :L] = text
    C = manifest["t3"]["cond"]["length"]
    rows = cond.shape[1]
    cond16 = np.zeros((1, C, cond.shape[2]), np.float16)
    cond16[:, :rows] = np.array(cond.astype(mx.float16))
    extra = {} if use_cfg else {"cond_len": np.array([rows], np.int32)}
    got = [interp.run(prefill_name(T), cond=cond16, text_ids=ids, text_len=np.array([L], np.int32), **extra)["logits"]]
    start = rows + L + manifest["t3"].get("bos_tokens", 2)
    for s, tok in enumerate(tokens):
        inputs = {"token": np.array([tok], np.int32), "position": np.array([start + s], np.int32),
                  "speech_position": np.array([s + 1], np.int32)}
        names = manifest["t3"]["functions"][FUNCTION_DECODE]["inputs"]
        got.append(interp.run(FUNCTION_DECODE, **{k: v for k, v in inputs.items() if k in names})["logits"])
    errors = [rel_err(g, r) for g, r in zip(got, ref)]
    return {"steps": steps, "prefill_rel_err": errors[0], "max_decode_rel_err": max(errors[1:]),
            "tolerance": MAX_REL_ERR, "ok": max(errors) <= MAX_REL_ERR}


def package_size(package: Path) -> int:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


def t3_fp32_bytes(t3, context: int) -> int:
    """Bytes the exported T3 weights (everything but cond_enc, baked per voice) take at fp32; GPT-2's
    wpe counts its first `context` rows (all the package stores), LayerNorms and biases count too."""
    n = 0
    for path, m in t3.named_modules():
        if path.startswith("cond_enc") or path == "text_head":
            continue
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            rows = min(m.weight.shape[0], context) if path == "tfmr.wpe" else m.weight.shape[0]
            n += rows * m.weight.shape[1] * 32 // m.bits  # dense (O, I)
        elif isinstance(m, (nn.Linear, nn.Embedding, nn.RMSNorm, nn.LayerNorm)):
            n += m.weight[:context].size if path == "tfmr.wpe" else m.weight.size
        else:
            continue
        n += m.bias.size if "bias" in m else 0
    return 4 * n


def verify(bundle, model_dir) -> dict:
    bundle, model_dir = Path(bundle), Path(model_dir)
    if not (bundle / MANIFEST).is_file():
        raise VerifyError(f"{bundle}: no {MANIFEST}; is this a .nightingale bundle? (nightingale export-ios)")
    manifest = json.loads((bundle / MANIFEST).read_text())
    t3, _ = model_io.load_t3(model_dir)
    interp = Interpreter(bundle / T3_PACKAGE)
    weights = bundle / T3_PACKAGE / "Data" / "com.apple.CoreML" / "weights"
    t3_bytes = package_size(weights)
    t3_structure, t3_codes = structure(interp, t3, manifest), codes(interp, t3)
    # The package computes in fp16; its reference is the same weights with fp32 activations (a
    # quantized T3 is bf16 by default, whose own rounding would dominate the comparison).
    t3.set_dtype(mx.float32)
    report = {
        "bundle": str(bundle),
        "hashes_ok": file_hashes(bundle) == manifest["files"],
        "bundle_bytes": sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()),
        "t3": {
            "structure": t3_structure,
            "codes": t3_codes,
            "numerics": t3_numerics(interp, t3, manifest),
            "weight_bytes": t3_bytes,
            "weight_fraction_of_fp32": t3_bytes / t3_fp32_bytes(t3, manifest["t3"]["context"]),
        },
    }
    s = report["t3"]["structure"]
    report["ok"] = bool(report["hashes_ok"] and report["t3"]["numerics"]["ok"] and s["states_ok"]
                        and not (s["unexpected_ops"] or s["random_ops"] or s["dynamic_shapes"]
                                 or s["linears_not_blockwise"])
                        and (manifest["t3"]["quantization"]["bits"] not in (4, 8) or report["t3"]["codes"]["codes_equal"]))
    if manifest.get("s3gen"):
        s3gen = model_io.load_s3gen(model_dir)
        report["s3gen"] = verify_s3gen(bundle, manifest, s3gen, codes)
        report["ok"] = report["ok"] and report["s3gen"]["ok"]
    else:
        report["s3gen"] = None
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m ios_export.verify", description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="a .nightingale bundle written by nightingale export-ios")
    p.add_argument("-m", "--model", required=True, help="the converted model dir it was exported from")
    args = p.parse_args(argv)
    try:
        report = verify(args.bundle, args.model)
    except ValueError as e:
        print(f"verify: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
