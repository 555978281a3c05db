"""Our side of the T3 parity checks (project env, no torch): inputs, our run, the comparison.

Shared by `parity.py` (live reference) and the CI test (committed fixtures), so both assert
the same checks with the same tolerances.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from nightingale_mlx.config import START_TEXT_TOKEN, STOP_TEXT_TOKEN
from nightingale_mlx.model_io import load_t3
from nightingale_mlx.sampling import SamplingParams

# fp32 tolerances. Logits are O(1) at tiny size and O(10) at full size; errors grow with depth.
TOLERANCES = {
    "tiny": {"cond_emb": 1e-4, "logits": 2e-4, "probs": 2e-5},
    "full": {"cond_emb": 1e-3, "logits": 5e-3, "probs": 2e-4},
}

# (name, mode, steps, sampling params): production settings of each profile, plus greedy runs.
SCENARIOS = {
    "mtl": [
        ("teacher", 24, dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=2.0, min_p=0.05, top_p=1.0)),
        ("greedy", 60, dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=2.0, min_p=0.05, top_p=1.0)),
        ("sample", 40, dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=2.0, min_p=0.05, top_p=1.0)),
    ],
    "en": [
        ("teacher", 24, dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2, min_p=0.05, top_p=0.95)),
        ("greedy", 60, dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2, min_p=0.05, top_p=1.0)),
        ("sample", 40, dict(temperature=0.8, cfg_weight=0.7, repetition_penalty=1.2, min_p=0.1, top_p=0.9)),
    ],
}


def family(variant: str) -> str:
    return "en" if variant == "en" else "mtl"


def make_inputs(variant: str, mode: str, steps: int, params: dict, seed: int) -> dict:
    """Deterministic inputs: a voice (speaker embedding, 150 prompt tokens), text ids, noise."""
    rng = np.random.default_rng([seed, 7, ["teacher", "greedy", "sample"].index(mode)])
    text_vocab = 704 if variant == "en" else 2454
    text = rng.integers(1, text_vocab, size=14)
    text = text[(text != START_TEXT_TOKEN) & (text != STOP_TEXT_TOKEN)]
    spk = np.abs(rng.standard_normal((1, 256))).astype(np.float32)
    return {
        "speaker_emb": spk / np.linalg.norm(spk),
        "prompt_tokens": rng.integers(0, 6561, size=(1, 150)).astype(np.int64),
        "exaggeration": np.float32(0.5 + 0.3 * rng.random()),
        "text_tokens": np.concatenate([[START_TEXT_TOKEN], text, [STOP_TEXT_TOKEN]]).astype(np.int64),
        "params": np.array(json.dumps({**params, "max_new_tokens": steps})),
        "mode": np.array(mode),
        "forced": rng.integers(0, 6561, size=steps).astype(np.int64),
        "uniforms": rng.random(steps),
    }


def run_ours(model_dir: Path, inputs: dict, alignment_analyzer: bool) -> dict:
    """Runs our T3 exactly as the reference run did; records the same quantities."""
    model, _ = load_t3(model_dir)
    params = SamplingParams(**json.loads(str(inputs["params"])))
    cond = model.condition(
        mx.array(inputs["speaker_emb"]), mx.array(inputs["prompt_tokens"]), float(inputs["exaggeration"])
    )
    text = mx.array(inputs["text_tokens"])

    # Raw logits under teacher forcing of the reference's own tokens (both CFG rows).
    mode = str(inputs["mode"])
    probs, logits = [], []

    def sampler(processed):
        p = mx.softmax(processed, axis=-1)[0]
        step = len(probs)
        probs.append(np.array(p))
        pn = probs[-1].astype(np.float64)
        if mode == "teacher":
            tok = int(inputs["forced"][step])
        elif mode == "greedy":
            tok = int(np.argmax(pn))
        else:
            tok = int(np.searchsorted(np.cumsum(pn), inputs["uniforms"][step] * pn.sum(), side="right"))
        return mx.array([tok])

    tokens = list(model.inference(cond, text, params, sampler=sampler, alignment_analyzer=alignment_analyzer))
    if len(tokens) < params.max_new_tokens:
        tokens.append(model.cfg.stop_speech_token)  # the reference keeps EOS in its output
    logits = teacher_forced_logits(model, cond, text, tokens, params.cfg_weight > 0)
    return {
        "cond_emb": np.array(cond),
        "logits": logits,
        "probs": np.stack(probs),
        "tokens": np.array(tokens, dtype=np.int64),
    }


def teacher_forced_logits(model, cond, text, tokens, cfg: bool) -> np.ndarray:
    cache = model.make_cache()
    hidden, _ = model(model.prefill_embeddings(cond, text, cfg), cache)
    out = [np.array(model.logits(hidden))]
    batch = 2 if cfg else 1
    for step, tok in enumerate(tokens):
        if tok == model.cfg.stop_speech_token:
            break
        hidden, _ = model(model.speech_embedding(mx.array([tok]), step, batch), cache)
        out.append(np.array(model.logits(hidden)))
    return np.stack(out)


def _err(name, ref, ours, tol):
    ref = np.asarray(ref, dtype=np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    if ref.shape != ours.shape:
        return {"name": name, "max_abs_err": None, "max_rel_err": None, "tolerance": tol, "ok": False,
                "detail": f"shape {ours.shape} vs reference {ref.shape}"}
    finite = np.isfinite(ref)
    same_support = bool(np.array_equal(finite, np.isfinite(ours)))
    diff = np.abs(ref[finite] - ours[finite]) if finite.any() else np.zeros(1)
    abs_err = float(diff.max())
    rel_err = float((diff / (np.abs(ref[finite]) + 1e-6)).max()) if finite.any() else 0.0
    out = {"name": name, "max_abs_err": abs_err, "max_rel_err": rel_err, "tolerance": tol,
           "ok": bool(same_support and abs_err <= tol)}
    if not same_support:
        out["detail"] = "finite/-inf support differs"
    return out


def compare(ref: dict, ours: dict, size: str, prefix: str, compare_logits_steps: int = None) -> list:
    """The checks of one scenario; each a dict with name, max_abs_err, max_rel_err, tolerance, ok."""
    tol = TOLERANCES[size]
    n = compare_logits_steps
    checks = [_err(f"{prefix}.cond_emb", ref["cond_emb"], ours["cond_emb"], tol["cond_emb"])]
    if "logits" in ref:
        k = min(len(ref["logits"]), n or len(ref["logits"]))
        checks.append(_err(f"{prefix}.logits_both_rows", ref["logits"][:k], ours["logits"][:k], tol["logits"]))
    if "probs" in ref:
        k = min(len(ref["probs"]), n or len(ref["probs"]))
        checks.append(_err(f"{prefix}.processed_probs", ref["probs"][:k], ours["probs"][:k], tol["probs"]))
    same = ref["tokens"].shape == ours["tokens"].shape and bool(np.array_equal(ref["tokens"], ours["tokens"]))
    mismatch = 0 if same else int(np.argmax(
        np.pad(ours["tokens"], (0, max(0, len(ref["tokens"]) - len(ours["tokens"]))), constant_values=-1)[: len(ref["tokens"])]
        != ref["tokens"]
    ) if len(ref["tokens"]) else 0)
    checks.append({"name": f"{prefix}.tokens_identical", "max_abs_err": float(not same), "max_rel_err": None,
                   "tolerance": 0, "ok": same, "steps": int(len(ref["tokens"])),
                   **({} if same else {"first_mismatch": mismatch})})
    return checks
