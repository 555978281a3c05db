"""Our side of the T3 parity checks (project env, no torch): inputs, our run, the comparison.

Shared by `parity.py` (live reference) and the CI test (committed fixtures), so both assert
the same checks with the same tolerances.
"""

import json
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np

from nightingale_mlx.config import START_TEXT_TOKEN, STOP_TEXT_TOKEN
from nightingale_mlx import sampling
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


def run_ours(model_dir: Path, inputs: dict, alignment_analyzer: bool, follow=None) -> dict:
    """Runs our T3 exactly as the reference run did; records the same quantities.

    With `follow` (the reference's tokens), greedy and sample runs take the reference's token at
    every step, as teacher forcing does, so every step's distribution stays comparable; our own
    choice and its margin are recorded (`own`, `margin`) for `token_choice_check`.
    """
    model, _ = load_t3(model_dir)
    params = SamplingParams(**json.loads(str(inputs["params"])))
    cond = model.condition(
        mx.array(inputs["speaker_emb"]), mx.array(inputs["prompt_tokens"]), float(inputs["exaggeration"])
    )
    text = mx.array(inputs["text_tokens"])

    # Raw logits under teacher forcing of the reference's own tokens (both CFG rows).
    mode = str(inputs["mode"])
    probs, own, margins = [], [], []

    def sampler(processed):
        p = mx.softmax(processed, axis=-1)[0]
        step = len(probs)
        probs.append(np.array(p))
        pn = probs[-1].astype(np.float64)
        if mode == "teacher":
            return mx.array([int(inputs["forced"][step])])
        tok, margin = own_choice(mode, pn, inputs["uniforms"][step],
                                 None if follow is None else int(follow[step]))
        own.append(tok)
        margins.append(margin)
        return mx.array([tok if follow is None else int(follow[step])])

    with recording_top_p() as pre_top_p:
        tokens = list(model.inference(cond, text, params, sampler=sampler, alignment_analyzer=alignment_analyzer))
    if len(tokens) < params.max_new_tokens:
        tokens.append(model.cfg.stop_speech_token)  # the reference keeps EOS in its output
    logits = teacher_forced_logits(model, cond, text, tokens, params.cfg_weight > 0)
    out = {
        "cond_emb": np.array(cond.astype(mx.float32)),
        "logits": logits,
        "probs": np.stack(probs),
        "tokens": np.array(tokens, dtype=np.int64),
    }
    if pre_top_p:
        out["pre_top_p"] = np.stack(pre_top_p)
    if follow is not None and mode != "teacher":
        out.update(own=np.array(own, dtype=np.int64), margin=np.array(margins), mode=np.array(mode))
    return out


@contextmanager
def recording_top_p():
    """Records each step's distribution as our top-p filter receives it (top_p < 1 only): the
    cumulative mass a top-p boundary flip is judged by (`support_flips`)."""
    seen, original = [], sampling.apply_top_p

    def recording(logits, top_p):
        if top_p < 1.0:
            seen.append(np.array(mx.softmax(logits.astype(mx.float32), axis=-1)[0]))
        return original(logits, top_p)

    sampling.apply_top_p = recording
    try:
        yield seen
    finally:
        sampling.apply_top_p = original


def own_choice(mode: str, p: np.ndarray, u: float, other=None):
    """Our token for a step (argmax, or the inverse CDF at the shared uniform `u`) and its margin
    against `other` (the reference's token): how far our probabilities would have to move for
    the choice to become `other`. Greedy: p[ours] - p[other]. Sample: the distance of u * sum(p)
    from the nearest edge of `other`'s CDF interval. 0 when the choices agree."""
    if mode == "greedy":
        tok = int(np.argmax(p))
        return tok, (0.0 if other is None or other == tok else float(p[tok] - p[other]))
    cdf = np.cumsum(p)
    target = u * cdf[-1]
    tok = int(np.searchsorted(cdf, target, side="right"))
    if other is None or other == tok:
        return tok, 0.0
    lower = cdf[other - 1] if other > 0 else 0.0  # other's interval is [lower, cdf[other])
    return tok, float(lower - target if target < lower else target - cdf[other])


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
    details = support_flips(ref, ours, min_p)
    return len(details), all(d["ratio_off"] <= rel for d in details)


def support_flips(ref: np.ndarray, ours: np.ndarray, min_p: float, top_p: float = 1.0, pre_top_p=None,
                  tol: float = 0.0, rel: float = 1e-3) -> list:
    """Each (step, token) kept by one side only, with its margins and cause.

    min-p: how far the kept side's probability sits from the threshold, absolute (`margin`) and
    relative (`ratio_off` = |p / (min_p p_max) - 1|); within `rel` it is a min-p boundary flip.
    top-p (HF drops the ascending tail whose cumulative mass is <= 1 - top_p): the token's
    ascending cumulative mass in our distribution before top-p (`pre_top_p`, recorded by
    run_ours) against 1 - top_p. Each of the n tokens summed carries at most `tol` of error, so a
    margin within n * tol is a top-p boundary flip. Anything else is unexplained.
    """
    kept_ref, kept_ours = ref > 0, ours > 0
    out = []
    for step, tok in np.argwhere(kept_ref != kept_ours):
        side = ref[step] if kept_ref[step, tok] else ours[step]
        threshold = min_p * side.max()
        d = {"step": int(step), "token": int(tok), "kept_by": "reference" if kept_ref[step, tok] else "ours",
             "margin": float(abs(side[tok] - threshold)), "ratio_off": float(abs(side[tok] / threshold - 1))
             if threshold > 0 else float("inf")}
        d["cause"] = "min_p boundary" if d["ratio_off"] <= rel else "unexplained"
        if d["cause"] == "unexplained" and top_p < 1.0 and pre_top_p is not None and step < len(pre_top_p):
            q = np.asarray(pre_top_p[step], np.float64)
            order = np.argsort(q, kind="stable")  # ascending, as HF sorts
            pos = int(np.flatnonzero(order == tok)[0])
            ascending = q[order][: pos + 1]
            d["top_p_margin"] = float(abs(ascending.sum() - (1.0 - top_p)))
            d["top_p_bound"] = float(tol * np.count_nonzero(ascending))
            if d["top_p_margin"] <= d["top_p_bound"]:
                d["cause"] = "top_p boundary"
        out.append(d)
    return out


def processed_probs_check(name: str, ref: np.ndarray, ours: np.ndarray, tol: float, min_p: float,
                          top_p: float = 1.0, pre_top_p=None, **extra) -> dict:
    """Processed distributions per step. Where a token sits on a min-p or top-p boundary one side
    may keep it and the other not (`support_flips`); that step's distributions are then compared
    renormalised over the tokens both kept, since one flipped token rescales all the others."""
    ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    if ref.shape != ours.shape:
        return _err(name, ref, ours, tol, **extra)
    both = (ref > 0) & (ours > 0)
    flipped = ((ref > 0) != (ours > 0)).any(axis=-1)
    r, o = np.where(both, ref, 0), np.where(both, ours, 0)
    r[flipped] /= r[flipped].sum(axis=-1, keepdims=True)
    o[flipped] /= o[flipped].sum(axis=-1, keepdims=True)
    flips = support_flips(ref, ours, min_p, top_p, pre_top_p, tol)
    check = _err(name, r, o, tol, min_p_boundary_flips=sum(d["cause"] == "min_p boundary" for d in flips),
                 top_p_boundary_flips=sum(d["cause"] == "top_p boundary" for d in flips), **extra)
    if flips:
        check["support_flips"] = flips[:20]
    check["ok"] = check["ok"] and all(d["cause"] != "unexplained" for d in flips)
    return check


def token_choice_check(ref: dict, ours: dict, size: str, prefix: str, flips_at: set) -> dict:
    """Greedy/sample runs that followed the reference: every step where our own choice differs.

    A flip is accepted when its margin (own_choice) is within the probability tolerance: the
    shared uniform (or the top-2 gap) sat within float error of a boundary. At a step where the
    two sides kept different tokens on the min-p boundary (`flips_at`), the CDF moves by that
    token's mass, so there the margin may reach the step's measured CDF error. Any other flip fails.
    """
    tol = TOLERANCES[size]["probs"]
    mode = str(ours["mode"])
    bound = 2 * tol if mode == "greedy" else tol  # greedy's gap is two probabilities' error
    rt, own = ref["tokens"], ours["own"]
    details, ok = [], True
    for step in np.flatnonzero(own != rt[: len(own)]):
        margin = float(ours["margin"][step])
        err = None
        if step < len(ref["probs"]):
            rp, op = ref["probs"][step].astype(np.float64), ours["probs"][step].astype(np.float64)
            err = float(np.abs(np.cumsum(rp) - np.cumsum(op)).max() if mode == "sample"
                        else 2 * np.abs(rp - op)[[own[step], rt[step]]].max())
        boundary = step in flips_at and err is not None and margin <= err
        explained = margin <= bound or boundary
        ok = ok and explained
        details.append({"step": int(step), "ours": int(own[step]), "reference": int(rt[step]), "margin": margin,
                        "step_error": err, "cause": "min_p boundary" if boundary and margin > bound else
                        "float error" if explained else "unexplained"})
    return {"name": f"{prefix}.token_choices", "max_abs_err": max([d["margin"] for d in details], default=0.0),
            "max_rel_err": None, "tolerance": f"each flip's margin <= {bound:g} (or a min-p boundary step)",
            "ok": ok and bool(np.array_equal(rt, ours["tokens"])), "steps": int(len(rt)), "flips": details}


# Against float64: ours vs the reference's own fp32 error, as a ratio per stage. The rule is on
# the RMS error (a max over ~1e5-1e6 values is one sample's luck; the max stays reported, and the
# fp32 tolerances above bound it). Both are fp32 with different summation orders, so either can
# be the larger: 2x bounds that spread (measured ratios: README). Below a floor of a few ulps of
# the largest value (fp32's resolution) no ratio is claimed.
EXACT = {"cond_emb": 2.0, "logits": 2.0, "probs": 2.0}
FLOOR_ULPS = 4


def exact_check(name: str, exact, ref, ours, ratio: float, floor_ulps: float = FLOOR_ULPS, mask=None) -> dict:
    """Ours and the reference, each against the float64 reference: ours passes when its RMS error
    is within `ratio` x the reference's own, or its max error is under `floor_ulps` fp32 ulps of
    the largest exact value."""
    exact, ref, ours = (np.asarray(a, np.float64) for a in (exact, ref, ours))
    if not exact.shape == ref.shape == ours.shape:
        return {"name": name, "ok": False, "detail": f"shapes {ours.shape} {ref.shape} vs float64 {exact.shape}"}
    if mask is not None:
        exact, ref, ours = (np.where(mask, a, 0) for a in (exact, ref, ours))
    if not exact.size:
        return {"name": name, "ok": True, "detail": "empty"}
    floor = floor_ulps * float(np.finfo(np.float32).eps) * float(np.abs(exact).max())
    rms = lambda d: float(np.sqrt(np.mean(d ** 2)))  # noqa: E731
    e_ours, e_ref = float(np.abs(ours - exact).max()), float(np.abs(ref - exact).max())
    r_ours, r_ref = rms(ours - exact), rms(ref - exact)
    return {"name": name, "max_abs_err": e_ours, "reference_max_abs_err": e_ref, "max_rel_err": None,
            "rms_err": r_ours, "reference_rms_err": r_ref, "ratio": r_ours / r_ref if r_ref > 0 else None,
            "max_ratio": e_ours / e_ref if e_ref > 0 else None,
            "tolerance": f"rms <= {ratio:g} x reference's rms, or max <= {floor:.3g} ({floor_ulps:g} ulps)",
            "ok": r_ours <= ratio * r_ref or e_ours <= floor}


def compare(ref: dict, ours: dict, size: str, prefix: str, min_p: float, exact: dict = None,
            top_p: float = 1.0) -> list:
    """The checks of one scenario; each a dict with name, max_abs_err, max_rel_err, tolerance, ok.

    Fixtures keep only the first steps of logits and probs, so each is compared over the
    reference's length. `exact` is the float64 reference run on the reference's tokens.
    """
    tol = TOLERANCES[size]
    checks = [_err(f"{prefix}.cond_emb", ref["cond_emb"], ours["cond_emb"], tol["cond_emb"])]
    k = len(ref["logits"])
    checks.append(_err(f"{prefix}.logits_both_rows", ref["logits"], ours["logits"][:k], tol["logits"]))

    k = len(ref["probs"])
    rp, op = ref["probs"].astype(np.float64), ours["probs"][:k].astype(np.float64)
    flips_at = set(np.argwhere((rp > 0) != (op > 0))[:, 0].tolist()) if rp.shape == op.shape else set()
    checks.append(processed_probs_check(f"{prefix}.processed_probs", rp, op, tol["probs"], min_p, top_p,
                                        ours.get("pre_top_p")))

    if exact is not None:
        checks.append(exact_check(f"{prefix}.cond_emb_vs_float64", exact["cond_emb"], ref["cond_emb"],
                                  ours["cond_emb"], EXACT["cond_emb"]))
        k = len(exact["logits"])
        checks.append(exact_check(f"{prefix}.logits_vs_float64", exact["logits"], ref["logits"][:k],
                                  ours["logits"][:k], EXACT["logits"]))
        ep = exact["probs"]
        k = len(ep)
        rp_, op_ = ref["probs"][:k], ours["probs"][:k]
        if ep.shape == rp_.shape == op_.shape:
            support = ((ep > 0) == (rp_ > 0)) & ((ep > 0) == (op_ > 0))  # min-p flips: counted above
            checks.append(exact_check(f"{prefix}.processed_probs_vs_float64", ep, rp_, op_, EXACT["probs"],
                                      mask=support))
            checks[-1]["min_p_boundary_flips"] = {
                "ours": min_p_boundary_flips(ep, op_.astype(np.float64), min_p)[0],
                "reference": min_p_boundary_flips(ep, rp_.astype(np.float64), min_p)[0]}
        else:
            checks.append({"name": f"{prefix}.processed_probs_vs_float64", "ok": False,
                           "detail": f"steps {len(op_)} / {len(rp_)} vs float64 {len(ep)}"})

    if "own" in ours:
        checks.append(token_choice_check(ref, ours, size, prefix, flips_at))
        return checks
    rt, ot = ref["tokens"], ours["tokens"]
    same = rt.shape == ot.shape and bool(np.array_equal(rt, ot))
    n = min(len(rt), len(ot))
    first = next((i for i in range(n) if rt[i] != ot[i]), n)
    checks.append({"name": f"{prefix}.tokens_identical", "max_abs_err": float(not same), "max_rel_err": None,
                   "tolerance": 0, "ok": same, "steps": int(len(rt)),
                   **({} if same else {"first_mismatch": first})})
    return checks
