"""Turbo and Nano: the named branches (sampling order, BOS/EOS rules, meanflow), conversion,
voices, the text front end, and the CLI on the synthetic models. Parity with the reference is in
test_turbo_parity.py."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from nightingale_mlx.config import T3Config
from nightingale_mlx.sampling import SamplingParams, apply_top_k, process_logits
from nightingale_mlx.text import punc_norm


@pytest.fixture(scope="module")
def turbo_dir(cache):
    from nightingale_mlx.synthetic import synthetic_model

    return synthetic_model(cache / "synthetic-turbo", "turbo")


@pytest.fixture(scope="module")
def turbo(turbo_dir):
    import nightingale_mlx as ng

    return ng.TTS(turbo_dir)


# ------------------------------------------------------------------ sampling


def test_turbo_order_applies_the_penalty_after_top_p():
    # Top-p 0.5 keeps only the top token. Warpers first (inference_turbo): token 0 survives, then
    # is penalised; penalty first (T3.inference): token 0 drops below token 1, which survives.
    logits, seen = mx.array([[2.0, 1.9, -5.0, -6.0]]), mx.array([[True, False, False, False]])
    turbo = SamplingParams(temperature=1.0, top_p=0.5, repetition_penalty=2.0, min_p=0.0, order="warpers_first")
    out = np.array(process_logits(logits, seen, turbo))[0]
    assert out[0] == 1.0 and np.isneginf(out[1:]).all()
    llama = SamplingParams(**{**turbo.__dict__, "order": "penalty_first"})
    out = np.array(process_logits(logits, seen, llama))[0]
    assert out[1] == pytest.approx(1.9) and np.isneginf(out[[0, 2, 3]]).all()


def test_top_k_keeps_ties_with_the_kth_score_as_hf_does():
    logits = mx.array([[0.5, 3.0, 1.0, 1.0, -2.0]])
    out = np.array(apply_top_k(logits, 2))[0]  # the 2nd largest is 1.0: both 1.0s stay
    np.testing.assert_array_equal(np.isfinite(out), [False, True, True, True, False])
    assert np.array_equal(np.array(apply_top_k(logits, 1000)), np.array(logits))  # k >= V: nothing dropped


def test_sampling_params_check_top_k_and_order():
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match="order"):
        SamplingParams(order="random")


# ------------------------------------------------------------------ T3 branches


def tiny_gpt2_t3():
    from nightingale_mlx.models.t3 import T3

    cfg = T3Config(backbone="gpt2", hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                   num_key_value_heads=1, text_vocab_size=300, speech_vocab_size=6563, learned_input_pos=False,
                   use_perceiver=False, emotion_adv=False, speech_head_bias=True, repeat_bos=False,
                   bos_always_penalised=False, prefill_token_stops=False, alignment_heads=[])
    model = T3(cfg)
    mx.eval(model.parameters())
    return model


def test_gpt2_t3_has_no_llama_only_parts():
    model = tiny_gpt2_t3()
    names = {k for k, _ in __import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(model.parameters())}
    assert "tfmr.wpe.weight" in names and "speech_head.bias" in names
    assert not any(n.startswith(("cond_enc.perceiver", "cond_enc.emotion_adv", "text_pos_emb", "speech_pos_emb",
                                 "tfmr.wte")) for n in names)
    cond = model.condition(mx.zeros((1, 256)), mx.array([[1, 2, 3, 4, 5]]), 0.5)
    assert cond.shape == (1, 1 + 5, 64)  # speaker | raw prompt embeddings; no emotion token
    embeds = model.prefill_embeddings(cond, mx.array([7, 8, 9]), False)
    assert embeds.shape == (1, 6 + 3 + 1, 64)  # one BOS (inference_turbo)


def test_gpt2_positions_continue_across_prefill_and_decode():
    """One forward of L embeddings == prefill of L-1 then one decode step (wpe at the cache offset)."""
    model = tiny_gpt2_t3()
    x = mx.random.normal((1, 7, 64), key=mx.random.key(0))
    whole, _ = model(x, model.make_cache())
    cache = model.make_cache()
    model(x[:, :6], cache)
    last, _ = model(x[:, 6:], cache)
    np.testing.assert_allclose(np.array(last[:, -1]), np.array(whole[:, -1]), atol=1e-5)


def test_turbo_bos_is_penalised_at_the_first_step_only_and_a_prefill_eos_does_not_stop():
    model = tiny_gpt2_t3()
    start, stop = model.cfg.start_speech_token, model.cfg.stop_speech_token
    script, seen_bos = [stop, 5, 6, stop, 7], []
    params = SamplingParams(temperature=1.0, top_p=1.0, min_p=0.0, cfg_weight=0.0, repetition_penalty=1e6,
                            order="warpers_first", max_new_tokens=10)

    def sampler(processed):
        seen_bos.append(float(processed[0, start]))
        return mx.array([script[len(seen_bos) - 1]])

    cond, text = model.condition(mx.zeros((1, 256)), mx.array([[1, 2]]), 0.0), mx.array([3, 4])
    tokens = list(model.inference(cond, text, params, sampler=sampler))
    assert tokens == [stop, 5, 6]  # the EOS from the prefill is kept; the next one ends generation
    # BOS's raw logits at steps 0 and 1; the 1e6 penalty scales it by 1e6 either way (sign-dependent).
    cache = model.make_cache()
    raw0 = float(model.logits(model(model.prefill_embeddings(cond, text, False), cache)[0])[0, start])
    raw1 = float(model.logits(model(model.speech_embedding(mx.array([stop]), 0, 1), cache)[0])[0, start])
    ratio0 = abs(seen_bos[0] / raw0)
    assert ratio0 == pytest.approx(1e6, rel=1e-3) or ratio0 == pytest.approx(1e-6, rel=1e-3)
    assert seen_bos[1] == pytest.approx(raw1, rel=1e-4, abs=1e-6)  # not in the history any more


# ------------------------------------------------------------------ S3Gen meanflow


def test_meanflow_is_two_linear_euler_steps_without_cfg(turbo):
    flow = turbo.s3gen.flow
    assert flow.cfg.meanflow and flow.cfg.n_timesteps == 2 and "time_embed_mixer" in flow.decoder.estimator
    calls = []
    est = flow.decoder.estimator

    class Spy:
        def __call__(self, x, mu, t, spks, cond, r=None):
            calls.append((x.shape[0], float(t[0]), float(r[0])))
            return est(x, mu, t, spks, cond, r)

    flow.decoder.estimator = Spy()
    try:
        mu = mx.zeros((1, 10, 80))
        list(flow.decoder.solve(mx.ones((1, 10, 80)), mu, mx.zeros((1, 80)), mu))
    finally:
        flow.decoder.estimator = est
    assert calls == [(1, 0.0, 0.5), (1, 0.5, 1.0)]


def test_turbo_appends_three_silence_tokens_and_keeps_their_audio(turbo):
    voice = turbo.resolve_voice(None)
    wav = turbo.s3gen.inference([1, 2, 3, 4], voice, key=mx.random.key(0), **turbo.s3gen_options())
    assert wav.shape[0] == (4 + 3) * 960


def test_bench_worker_runs_turbo_as_generate_does(turbo):
    """bench.compare_reference's workload for Turbo: its sampling without CFG, exactly N tokens,
    S3Gen on them plus the 3 silence tokens (batch and streaming)."""
    from bench.worker import run_once

    seen = {"params": [], "s3gen": []}
    t3_inference, s3gen_inference = turbo.t3.inference, turbo.s3gen.inference

    def t3_spy(cond, text, params, **kw):
        seen["params"].append(params)
        return t3_inference(cond, text, params, **kw)

    def s3gen_spy(tokens, voice, **kw):
        seen["s3gen"].append((len(tokens), kw.get("silence_tokens", 0)))
        return s3gen_inference(tokens, voice, **kw)

    turbo.t3.inference, turbo.s3gen.inference = t3_spy, s3gen_spy  # instance attributes, this test only
    try:
        voice = turbo.resolve_voice(None)
        r = run_once("e2e", turbo.t3, turbo.s3gen, voice, 6, 0.0, seed=0, silence=3)
        streamed = run_once("stream", turbo.t3, turbo.s3gen, voice, 6, 0.0, seed=0, silence=3)
    finally:
        del turbo.t3.inference, turbo.s3gen.inference
    assert all(p.cfg_weight == 0 and p.order == "warpers_first" and p.top_k == 1000 for p in seen["params"])
    assert seen["s3gen"] == [(6, 3)]
    assert r["decode_tok_s"] > 0 and streamed["ttfa_s"] is not None


# ------------------------------------------------------------------ conversion


def test_variant_is_detected_from_the_files_and_mismatches_fail(tmp_path):
    from convert.convert import convert, detect_variant
    from convert.sanitize import ConversionError
    from nightingale_mlx.synthetic import write_checkpoint

    for variant in ("turbo", "nano"):
        ckpt = tmp_path / variant
        ckpt.mkdir()
        write_checkpoint(ckpt, variant)
        assert detect_variant(ckpt) == variant
    shutil.copy(tmp_path / "nano" / "t3_nano_v1.safetensors", tmp_path / "turbo" / "t3_cfg.safetensors")
    with pytest.raises(ConversionError, match="GPT-2"):
        convert(tmp_path / "turbo", tmp_path / "out", variant="en", components=["t3"])


def test_turbo_conversion_is_strict(tmp_path):
    from safetensors.numpy import load_file, save_file

    from convert.convert import convert
    from nightingale_mlx.model_io import ModelDirError
    from nightingale_mlx.synthetic import write_checkpoint

    write_checkpoint(tmp_path, "turbo")
    path = tmp_path / "t3_turbo_v1.safetensors"
    state = load_file(str(path))
    del state["tfmr.h.0.mlp.c_fc.bias"]
    save_file(state, str(path))
    with pytest.raises(ModelDirError, match="missing 1 tensors"):
        convert(tmp_path, tmp_path / "out", components=["t3"])


# ------------------------------------------------------------------ voices


def test_voices_record_their_family_and_a_mismatch_is_a_clear_error(turbo, tts, tmp_path):
    from nightingale_mlx.voice import Voice, VoiceError

    turbo_voice = turbo.resolve_voice(None)
    assert turbo_voice.family == "turbo"
    path = turbo_voice.save(tmp_path / "t.safetensors")
    assert Voice.load(path).family == "turbo"
    with pytest.raises(VoiceError, match="made for Turbo/Nano"):
        tts.resolve_voice(path)
    with pytest.raises(VoiceError, match="English/multilingual"):
        turbo.resolve_voice(tts.resolve_voice(None))


def test_turbo_voices_need_over_5_s_and_are_normalised_to_minus_27_lufs(turbo, fixtures_dir):
    import pyloudnorm

    from nightingale_mlx.audio.io import AudioError
    from nightingale_mlx.voice import load_reference, normalize_loudness

    with pytest.raises(AudioError, match="at least 5 s"):
        turbo.prepare_voice(fixtures_dir / "audio" / "speech_odd.flac")  # 2.4 s
    wav = load_reference(fixtures_dir / "audio" / "speech_long.flac", min_seconds=5.0)
    out = normalize_loudness(wav, 24000)
    assert out.dtype == np.float32
    assert pyloudnorm.Meter(24000).integrated_loudness(out) == pytest.approx(-27.0, abs=0.01)
    silence = np.zeros(24000 * 6, np.float32)
    np.testing.assert_array_equal(normalize_loudness(silence, 24000), silence)  # -inf LUFS: left alone
    voice = turbo.prepare_voice(fixtures_dir / "audio" / "speech_long.flac")
    assert voice.family == "turbo" and voice.prompt_tokens.shape[1] == 180  # 7.2 s x 25 (<= 375)


# ------------------------------------------------------------------ text


def test_turbo_punc_norm_keeps_ellipses_dashes_and_semicolons():
    text = "hello... a - b; c: “d” — e…"
    assert punc_norm(text, multilingual=False, turbo=True) == 'Hello... a - b; c, "d" - e,'
    assert punc_norm(text, multilingual=False) == 'Hello,  a, b,  c, "d" - e,'  # the English one's spaces
    assert punc_norm("ok。", multilingual=False, turbo=True) == "Ok。."


def test_gpt2_tokenizer_keeps_tags_as_single_ids_and_adds_no_specials(turbo):
    from nightingale_mlx.text import UnsupportedLanguageError

    tok = turbo.tokenizer
    assert tok.vocab_size == 50276
    ids = tok.text_tokens("the cat [laugh] sat [sigh]")
    assert 50257 in ids and 50259 in ids  # [laugh], [sigh]
    assert ids == tok.encode("The cat [laugh] sat [sigh].")  # no [START]/[STOP] around them
    assert tok.decode(ids) == "The cat [laugh] sat [sigh]."
    with pytest.raises(UnsupportedLanguageError, match="only en"):
        tok.text_tokens("bonjour", "fr")


# ------------------------------------------------------------------ CLI and API


def test_cli_speaks_and_streams_with_synthetic_turbo_and_nano(cache, monkeypatch, capsys, tmp_path):
    import soundfile as sf

    from nightingale_mlx.cli import main

    monkeypatch.setenv("NIGHTINGALE_CACHE", str(cache))
    for variant, extra in (("turbo", []), ("nano", ["--stream", "--top-k", "50"])):
        out = tmp_path / f"{variant}.wav"
        main(["speak", "Hi there [chuckle].", "--model", "synthetic", "--variant", variant, "-o", str(out),
              "--seed", "3", "--max-new-tokens", "20", *extra])
        assert sf.info(str(out)).frames > 0
    assert "error" not in capsys.readouterr().err


def test_turbo_warns_and_ignores_cfg_and_min_p(turbo, caplog):
    params = turbo.sampling_params(cfg_weight=0.5, min_p=0.1, top_k=10)
    assert (params.cfg_weight, params.min_p, params.top_k, params.order) == (0.0, 0.0, 10, "warpers_first")
    assert "no CFG or min-p" in caplog.text


def test_hub_downloads_only_turbo_files():
    from convert.hub import default_variant, variant_files

    assert default_variant("ResembleAI/chatterbox-turbo") == "turbo"
    assert default_variant("ResembleAI/chatterbox") == "mtl-v3"
    files = variant_files("turbo")
    assert "t3_turbo_v1.safetensors" in files and "s3gen_meanflow.safetensors" in files
    assert not any(f.endswith(".pt") and f != "conds.pt" for f in files)
    assert "vocab.json" in files and "merges.txt" in files
    json.dumps(files)
