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
from .checks import error_check as _err

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
        "cond_emb": np.array(cond.astype(mx.float32)),
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


def min_p_boundary_flips(ref: np.ndarray, ours: np.ndarray, min_p: float, rel: float = 1e-3):
    """Tokens kept by one side only, and whether each sat on the min-p threshold.

    A token whose probability is within fp32 rounding of `min_p * p_max` can be kept by one
    implementation and dropped by the other. Its ratio to the top token survives renormalisation,
    so the side that kept it shows `p / p_max ~= min_p`. Any other disagreement is a real one.
    """
    kept_ref, kept_ours = ref > 0, ours > 0
    flips = np.argwhere(kept_ref != kept_ours)
    on_boundary = []
    for step, tok in flips:
        side = ref[step] if kept_ref[step, tok] else ours[step]
        ratio = side[tok] / side.max()
        on_boundary.append(abs(ratio / min_p - 1) <= rel)
    return len(flips), all(on_boundary)


def compare(ref: dict, ours: dict, size: str, prefix: str, min_p: float) -> list:
    """The checks of one scenario; each a dict with name, max_abs_err, max_rel_err, tolerance, ok.

    Fixtures keep only the first steps of logits and probs, so each is compared over the
    reference's length.
    """
    tol = TOLERANCES[size]
    checks = [_err(f"{prefix}.cond_emb", ref["cond_emb"], ours["cond_emb"], tol["cond_emb"])]
    k = len(ref["logits"])
    checks.append(_err(f"{prefix}.logits_both_rows", ref["logits"], ours["logits"][:k], tol["logits"]))

    k = len(ref["probs"])
    rp, op = ref["probs"].astype(np.float64), ours["probs"][:k].astype(np.float64)
    flips, all_on_boundary = min_p_boundary_flips(rp, op, min_p) if rp.shape == op.shape else (0, True)
    mask = (rp > 0) == (op > 0)  # values are compared where both sides agree on the support
    check = _err(f"{prefix}.processed_probs", np.where(mask, rp, 0), np.where(mask, op, 0), tol["probs"],
                 min_p_boundary_flips=flips)
    check["ok"] = check["ok"] and all_on_boundary
    checks.append(check)

    rt, ot = ref["tokens"], ours["tokens"]
    same = rt.shape == ot.shape and bool(np.array_equal(rt, ot))
    n = min(len(rt), len(ot))
    first = next((i for i in range(n) if rt[i] != ot[i]), n)
    checks.append({"name": f"{prefix}.tokens_identical", "max_abs_err": float(not same), "max_rel_err": None,
                   "tolerance": 0, "ok": same, "steps": int(len(rt)),
                   **({} if same else {"first_mismatch": first})})
    return checks
