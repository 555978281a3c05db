"""Logit processing and sampling for T3, in the reference's order and on device.

The filters follow Hugging Face's processors that the reference uses (RepetitionPenalty,
MinP, TopP), so their boundary cases match exactly.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx


ORDERS = ("penalty_first", "warpers_first")


@dataclass
class SamplingParams:
    temperature: float = 0.8
    cfg_weight: float = 0.5
    repetition_penalty: float = 1.2
    min_p: float = 0.05
    top_p: float = 1.0
    max_new_tokens: int = 1000
    top_k: int = 0  # 0: off (Turbo's reference uses 1000)
    # "penalty_first": T3.inference (penalty, temperature, min-p, top-p); "warpers_first":
    # T3.inference_turbo (temperature, top-k, top-p, then the penalty).
    order: str = "penalty_first"

    def __post_init__(self):
        checks = (
            (self.order in ORDERS, f"order must be one of {', '.join(ORDERS)}"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0 turns it off)"),
            (self.temperature >= 0, "temperature must be >= 0 (0 means greedy)"),
            (self.cfg_weight >= 0, "cfg_weight must be >= 0"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def apply_cfg(logits: mx.array, cfg_weight: float) -> mx.array:
    """(2, V) -> (1, V): cond + w * (cond - uncond), the reference's form (not uncond + w*(...))."""
    cond, uncond = logits[0:1], logits[1:2]
    return cond + cfg_weight * (cond - uncond)


def apply_repetition_penalty(logits: mx.array, seen: mx.array, penalty: float) -> mx.array:
    """Each previously seen id once, however often: divide positive scores, multiply negative."""
    if penalty == 1.0:
        return logits
    penalised = mx.where(logits < 0, logits * penalty, logits / penalty)
    return mx.where(seen, penalised, logits)


def apply_min_p(logits: mx.array, min_p: float) -> mx.array:
    """Drop tokens whose probability is below min_p times the top probability."""
    if min_p <= 0:
        return logits
    probs = mx.softmax(logits, axis=-1)
    threshold = min_p * probs.max(axis=-1, keepdims=True)
    return mx.where(probs < threshold, -mx.inf, logits)  # the top token always survives


def apply_top_p(logits: mx.array, top_p: float) -> mx.array:
    """Drop the low tail whose cumulative probability is <= 1 - top_p (keeps at least one)."""
    if top_p >= 1.0:
        return logits
    order = mx.argsort(logits, axis=-1)  # ascending, as HF sorts
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    cum = mx.cumsum(mx.softmax(sorted_logits, axis=-1), axis=-1)
    remove = cum <= 1.0 - top_p
    remove[..., -1] = False
    inverse = mx.argsort(order, axis=-1)
    return mx.where(mx.take_along_axis(remove, inverse, axis=-1), -mx.inf, logits)


def apply_top_k(logits: mx.array, top_k: int) -> mx.array:
    """HF TopKLogitsWarper: drop scores below the k-th largest (ties with it are kept)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = mx.topk(logits, top_k, axis=-1).min(axis=-1, keepdims=True)
    return mx.where(logits < kth, -mx.inf, logits)


def _temperature(logits: mx.array, temperature: float) -> mx.array:
    return logits / temperature if temperature > 0 and temperature != 1.0 else logits


def process_logits(logits: mx.array, seen: mx.array, params: SamplingParams) -> mx.array:
    """The reference's processors on (1, V) float32 logits, in `params.order`."""
    if params.order == "warpers_first":
        # inference_turbo: the penalty comes last, so it rescales only what top-k/top-p kept (-inf stays).
        logits = _temperature(logits, params.temperature)
        logits = apply_top_p(apply_top_k(logits, params.top_k), params.top_p)
        return apply_repetition_penalty(logits, seen, params.repetition_penalty)
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    logits = _temperature(logits, params.temperature)
    logits = apply_min_p(logits, params.min_p)
    return apply_top_p(apply_top_k(logits, params.top_k), params.top_p)


def make_sampler(temperature: float, key: Optional[mx.array] = None) -> Callable[[mx.array], mx.array]:
    """Categorical sampling from processed logits (greedy at temperature 0); `key` makes it reproducible."""
    if temperature == 0:
        return lambda logits: mx.argmax(logits, axis=-1)
    state = {"key": key}

    def sample(logits: mx.array) -> mx.array:
        if state["key"] is None:
            return mx.random.categorical(logits)
        state["key"], sub = mx.random.split(state["key"])
        return mx.random.categorical(logits, key=sub)

    return sample
