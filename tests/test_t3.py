"""T3 model mechanics at a tiny size: cache consistency, dtypes, the analyzer heads, the generator."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from nightingale_mlx.models.t3 import T3
from nightingale_mlx.sampling import SamplingParams
from tests.helpers import tiny_t3_config
from tests.reference.weights import random_state_dict


@pytest.fixture(scope="module")
def model():
    m = T3(tiny_t3_config())
    spec = [(k, v.shape) for k, v in tree_flatten(m.parameters())]
    m.update(tree_unflatten([(k, mx.array(v)) for k, v in random_state_dict(spec, 3).items()]))
    return m


def voice(model):
    rng = np.random.default_rng(0)
    spk = mx.array(np.abs(rng.standard_normal((1, 256))).astype(np.float32))
    prompt = mx.array(rng.integers(0, 6561, (1, 150)))
    return model.condition(spk, prompt, 0.5)


TEXT = mx.array([255, 12, 40, 2, 77, 9, 0])


def test_prefill_layout_double_bos_and_uncond_row(model):
    cond = voice(model)
    e = model.prefill_embeddings(cond, TEXT, cfg=True)
    assert e.shape == (2, 34 + 7 + 2, 128)
    assert mx.allclose(e[0, :34], e[1, :34]) and mx.allclose(e[:, -1], e[:, -2])
    text_pos = model.text_pos_emb(7)
    assert mx.allclose(e[1, 34:41], text_pos)  # uncond text = positions only
    assert not mx.allclose(e[0, 34:41], text_pos)


def test_cached_decode_equals_full_forward(model):
    cond = voice(model)
    prefill = model.prefill_embeddings(cond, TEXT, cfg=True)
    tokens = [5, 900, 6000]
    cache = model.make_cache()
    h, _ = model(prefill, cache)
    for step, t in enumerate(tokens):
        h, _ = model(model.speech_embedding(mx.array([t]), step, 2), cache)
    full = mx.concatenate([prefill] + [model.speech_embedding(mx.array([t]), i, 2) for i, t in enumerate(tokens)], 1)
    h_full, _ = model(full, model.make_cache())
    np.testing.assert_allclose(np.array(model.logits(h)), np.array(model.logits(h_full)), atol=2e-5)


def test_alignment_heads_equal_explicit_attention(model):
    """The cheap 3-head probe equals softmax(q k^T / sqrt(d)) computed the long way."""
    cond = voice(model)
    prefill = model.prefill_embeddings(cond, TEXT, cfg=True)
    start = 34 + 7
    _, align = model(prefill, model.make_cache(), align_from=start)
    x = prefill
    maps = {}
    for idx, layer in enumerate(model.tfmr.layers):
        a = layer.self_attn
        n = layer.input_layernorm(x)
        L = n.shape[1]
        q = a.rope(a.q_proj(n).reshape(2, L, a.n_heads, -1).transpose(0, 2, 1, 3))
        k = a.rope(a.k_proj(n).reshape(2, L, a.n_kv_heads, -1).transpose(0, 2, 1, 3))
        s = (q @ k.swapaxes(-1, -2)) * a.scale + mx.triu(mx.full((L, L), -mx.inf), k=1)
        maps[idx] = mx.softmax(s, axis=-1)[0]
        x = layer(x, "causal")
    expected = mx.stack([maps[l][h, start:] for l, h in model.cfg.alignment_heads]).mean(0)
    assert align.shape == (2, prefill.shape[1])
    np.testing.assert_allclose(np.array(align), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(np.array(align).sum(-1), 1.0, atol=1e-5)


def test_fp16_model_gives_float32_logits(model):
    m16 = T3(model.cfg)
    m16.update(model.parameters())
    m16.set_dtype(mx.float16)
    cond = m16.condition(mx.ones((1, 256)) / 16, mx.array([[1, 2, 3]]), 0.5)
    h, _ = m16(m16.prefill_embeddings(cond, TEXT, cfg=True), m16.make_cache())
    assert h.dtype == mx.float16 and m16.logits(h).dtype == mx.float32


def test_generator_is_seeded_and_bounded(model):
    cond = voice(model)
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1.2)
    run = lambda: list(model.inference(cond, TEXT, params, key=mx.random.key(1)))
    a, b = run(), run()
    assert a == b and len(a) <= 12 and all(isinstance(t, int) and 0 <= t < 8194 for t in a)
    assert 6562 not in a


def test_cfg_off_runs_a_single_row(model):
    cond = voice(model)
    params = SamplingParams(max_new_tokens=4, cfg_weight=0.0, temperature=0)
    greedy = list(model.inference(cond, TEXT, params))
    cache = model.make_cache()
    h, _ = model(model.prefill_embeddings(cond, TEXT, cfg=False), cache)
    assert h.shape[0] == 1 and len(greedy) >= 1


def test_eos_ends_generation_without_being_yielded(model):
    cond = voice(model)
    forced = iter([7, 8, 6562, 9])
    sampler = lambda logits: mx.array([next(forced)])
    assert list(model.inference(cond, TEXT, SamplingParams(max_new_tokens=10), sampler=sampler)) == [7, 8]


def test_decode_attention_matches_mlx_lm(model):
    """The CPU decode step's numpy attention over the KV cache equals mlx-lm's Attention."""
    from mlx_lm.models.cache import KVCache
    from mlx_lm.models.llama import Attention

    attn = model.tfmr.layers[0].self_attn
    D = model.cfg.hidden_size
    # The private attributes of mlx-lm's Attention that CpuAttention and the analyzer read.
    assert (attn.n_heads, attn.n_kv_heads) == (model.cfg.num_attention_heads, model.cfg.num_key_value_heads)
    assert attn.scale == pytest.approx((D // attn.n_heads) ** -0.5)
    assert all(callable(getattr(attn, p)) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "rope"))
    ours, theirs = KVCache(), KVCache()
    prompt = mx.random.normal((2, 9, D), key=mx.random.key(0))
    mask = "causal"
    mx.eval(attn(prompt, mask, ours), Attention.__call__(attn, prompt, mask, theirs))
    for step in range(3):
        x = mx.random.normal((2, 1, D), key=mx.random.key(step + 1))
        got, want = attn(x, None, ours), Attention.__call__(attn, x, None, theirs)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-5)
    assert ours.offset == theirs.offset == 12


@pytest.mark.parametrize("backbone", ["llama", "gpt2"])
def test_prefix_keys_and_values_are_reused_exactly(model, backbone):
    """With a `prefix` dict, the first call stores the conditioning rows' keys and values and later
    calls prefill the text rows only: every step's logits equal a full prefill's (CFG, the
    alignment analyzer's attention rows and GPT-2's absolute positions included), and the stored
    arrays are not changed by the generations that reuse them."""
    if backbone == "gpt2":
        from tests.test_turbo import tiny_gpt2_t3

        model = tiny_gpt2_t3()
    params = SamplingParams(max_new_tokens=6, temperature=0, repetition_penalty=1.2,
                            cfg_weight=0.5 if backbone == "llama" else 0.0)
    cond = voice(model) if backbone == "llama" else model.condition(mx.ones((1, 256)), mx.array([[3, 1, 4, 1, 5]]), 0.5)

    def run(prefix):
        seen = []

        def sampler(logits):
            seen.append(np.array(logits))
            return mx.argmax(logits, axis=-1)

        tokens = list(model.inference(cond, TEXT, params, sampler=sampler, prefix=prefix,
                                      alignment_analyzer=backbone == "llama"))
        return tokens, seen

    full_tokens, full_logits = run(None)
    prefix = {}
    for attempt in range(3):  # computed and stored, then reused twice
        tokens, logits = run(prefix)
        assert tokens == full_tokens
        for a, b in zip(logits, full_logits):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    batch = 2 if backbone == "llama" else 1
    assert list(prefix) == [batch] and len(prefix[batch]) == len(model.tfmr.layers)
    assert prefix[batch][0][0].shape[2] == cond.shape[1]
