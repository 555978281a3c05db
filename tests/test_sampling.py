"""Logit processors against plain numpy statements of the Hugging Face processors the reference uses."""

import mlx.core as mx
import numpy as np
import pytest

from nightingale_mlx.sampling import (
    SamplingParams,
    apply_cfg,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_p,
    make_sampler,
    process_logits,
)


def softmax(x):
    e = np.exp(x - x[np.isfinite(x)].max())
    return e / e.sum()


@pytest.fixture
def logits():
    return np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32) * 3


def test_cfg_is_cond_plus_weighted_difference():
    x = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    out = np.array(apply_cfg(mx.array(x), 0.5))
    np.testing.assert_allclose(out, [[1 + 0.5 * (1 - 3), 2 + 0.5 * (2 + 1)]])


def test_repetition_penalty_divides_positive_multiplies_negative(logits):
    seen = np.zeros(64, bool)
    seen[[0, 5, 9]] = True
    out = np.array(apply_repetition_penalty(mx.array(logits), mx.array(seen), 2.0))
    ref = logits.copy()
    ref[0, seen] = np.where(ref[0, seen] < 0, ref[0, seen] * 2.0, ref[0, seen] / 2.0)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_min_p_removes_below_fraction_of_top(logits):
    out = np.array(apply_min_p(mx.array(logits), 0.1))
    p = softmax(logits[0])
    keep = p >= 0.1 * p.max()
    assert np.array_equal(np.isfinite(out[0]), keep)
    np.testing.assert_array_equal(out[0][keep], logits[0][keep])


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_matches_hf_rule(logits, top_p):
    out = np.array(apply_top_p(mx.array(logits), top_p))
    order = np.argsort(logits[0], kind="stable")
    cum = np.cumsum(softmax(logits[0][order]))
    remove = cum <= 1 - top_p
    remove[-1] = False
    expected = np.ones(64, bool)
    expected[order[remove]] = False
    assert np.array_equal(np.isfinite(out[0]), expected)
    assert np.isfinite(out[0]).sum() >= 1


def test_top_p_one_and_min_p_zero_are_identity(logits):
    x = mx.array(logits)
    assert mx.array_equal(apply_top_p(x, 1.0), x)
    assert mx.array_equal(apply_min_p(x, 0.0), x)


def test_process_order_penalty_then_temperature_then_filters(logits):
    seen = np.zeros(64, bool)
    seen[3] = True
    params = SamplingParams(temperature=0.5, repetition_penalty=1.5, min_p=0.05, top_p=0.9)
    out = np.array(process_logits(mx.array(logits), mx.array(seen), params))
    x = logits.copy()
    x[0, 3] = x[0, 3] / 1.5 if x[0, 3] > 0 else x[0, 3] * 1.5
    x = x / 0.5
    x = np.array(apply_top_p(apply_min_p(mx.array(x), 0.05), 0.9))
    np.testing.assert_allclose(out, x, rtol=1e-6)


def test_seeded_sampler_is_reproducible_and_greedy_is_argmax(logits):
    x = mx.array(logits)
    a = [make_sampler(1.0, mx.random.key(7))(x).item() for _ in range(1)]
    s1, s2 = make_sampler(1.0, mx.random.key(7)), make_sampler(1.0, mx.random.key(7))
    seq1 = [s1(x).item() for _ in range(20)]
    seq2 = [s2(x).item() for _ in range(20)]
    assert seq1 == seq2 and len(set(seq1)) > 1 and a[0] == seq1[0]
    assert make_sampler(0.0)(x).item() == int(np.argmax(logits))


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1), dict(min_p=1.0), dict(top_p=0), dict(max_new_tokens=0), dict(cfg_weight=-0.1)]
)
def test_bad_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
