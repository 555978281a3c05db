"""Chunked streaming on the synthetic model: lengths, determinism, early close, chunk sizes,
HiFT state across chunks, the seam metric, and `speak --stream`."""

import gc
import weakref

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from nightingale_mlx import streaming
from nightingale_mlx.audio.fade import trim_fade
from nightingale_mlx.audio.stream_player import JitterBuffer
from nightingale_mlx.streaming import (NoiseBuffer, S3GenStreamer, StreamConfig, StreamError, boundary_hf_ratio,
                                       stream_tokens)
from tests.test_tts import run_cli

TEXT = "Hello world, this is a streaming test."
SR = 24000


def test_stream_matches_generate_length_and_is_deterministic(tts):
    kw = dict(language="en", seed=5, max_new_tokens=40)
    whole = tts.generate(TEXT, **kw).samples
    a = list(tts.stream(TEXT, first_chunk_tokens=8, chunk_tokens=10, **kw))
    b = list(tts.stream(TEXT, first_chunk_tokens=8, chunk_tokens=10, **kw))
    joined = np.concatenate([c.samples for c in a])
    assert abs(len(joined) - len(whole)) <= StreamConfig().crossfade_samples  # no samples lost
    assert np.array_equal(joined, np.concatenate([c.samples for c in b]))
    assert [c.index for c in a] == list(range(len(a))) and [c.is_last for c in a] == [False] * (len(a) - 1) + [True]
    assert len(a) >= 3 and all(c.sample_rate == SR and c.samples.dtype == np.float32 for c in a)
    assert all(0 <= c.tokens_ready_s <= c.audio_ready_s for c in a)
    assert np.isfinite(joined).all() and np.abs(joined).max() <= 1.0


def test_closing_early_frees_the_streamer(tts, monkeypatch):
    made = []
    init = S3GenStreamer.__init__

    def record(self, *a, **k):
        init(self, *a, **k)
        made.append(weakref.ref(self))

    monkeypatch.setattr(S3GenStreamer, "__init__", record)
    it = tts.stream(TEXT, seed=1, max_new_tokens=40, first_chunk_tokens=6, chunk_tokens=6)
    first = next(it)
    assert first.index == 0 and not first.is_last
    it.close()
    del it
    gc.collect()
    assert made and made[0]() is None
    assert len(tts.generate("Still works.", seed=1, max_new_tokens=8).samples) > 0  # the lock was released


def test_bad_chunk_sizes_are_refused_at_call(tts):
    with pytest.raises(StreamError, match="chunk_tokens"):
        tts.stream(TEXT, chunk_tokens=0)
    with pytest.raises(ValueError, match="empty"):
        tts.stream("  ")


@pytest.fixture(scope="module")
def injected(tts):
    """The synthetic S3Gen, its voice, 40 tokens, noise buffers, and generate()'s mel and audio."""
    s3, voice = tts.s3gen, tts.resolve_voice(None)
    tokens = np.random.default_rng(0).integers(0, 6561, 40).tolist()
    fk, hk = mx.random.split(mx.random.key(0))
    pk, sk = mx.random.split(hk)
    H = s3.mel2wav.m_source.n_harmonics
    noise = dict(noise=NoiseBuffer(fk, 80, 64), sine_noise=NoiseBuffer(sk, H, 480 * 64),
                 phases=mx.random.uniform(-np.pi, np.pi, (1, H), key=pk))
    frames = 2 * (voice.gen_prompt_token.shape[1] + len(tokens))
    mel = s3.mel(mx.array(tokens), voice, noise=noise["noise"].slice(0, frames))
    wav = s3.mel2wav(mel, phases=noise["phases"], noise=noise["sine_noise"].slice(0, 480 * mel.shape[1]))
    return s3, voice, tokens, noise, mel, np.array(trim_fade(wav[0]))


def test_chunk_sizes_follow_the_schedule(injected):
    s3, voice, tokens, noise, _, wav = injected
    cfg = StreamConfig()
    pieces = list(stream_tokens(s3, iter(tokens), voice, first_chunk_tokens=12, chunk_tokens=10,
                                streamer=S3GenStreamer(s3, voice, **noise)))
    Np, Tm = voice.gen_prompt_token.shape[1], voice.gen_prompt_feat.shape[1]
    # Each render holds back the 3 lookahead tokens and the vocoder's held-back frames.
    settled = [2 * (Np + n - 3) - Tm - cfg.holdback_frames for n in (12, 22, 32)]
    assert [len(p[0]) for p in pieces[:3]] == [480 * settled[0]] + [480 * 20] * 2
    assert [p[1] for p in pieces] == [False, False, False, True]
    assert sum(len(p[0]) for p in pieces) == len(wav)


def test_vocoder_state_carries_across_chunks(injected):
    """Given generate()'s mel, the chunked vocoder (source phase from the F0 history, left context,
    held-back right edge, crossfade) reproduces generate()'s audio."""
    s3, voice, tokens, noise, mel, wav = injected
    st = S3GenStreamer(s3, voice, **noise)
    st._render_mel = lambda end: mel[:, st.frames:end]
    out = np.concatenate([p[0] for p in stream_tokens(s3, iter(tokens), voice, first_chunk_tokens=12,
                                                      chunk_tokens=8, streamer=st)])
    assert len(out) == len(wav)
    rel = np.sqrt(np.mean((out - wav) ** 2) / np.mean(wav**2))
    assert rel < 5e-3, rel  # measured 8e-4 with the default 14 held-back frames (1.7e-1 with 6)


def test_noise_buffer_is_indexed_by_absolute_position():
    buf = NoiseBuffer(mx.random.key(7), 3, 16)
    whole = np.array(buf.slice(0, 50))
    fresh = NoiseBuffer(mx.random.key(7), 3, 16)
    assert np.array_equal(np.array(fresh.slice(21, 37)), whole[:, 21:37])
    fresh.release_before(40)
    assert np.array_equal(np.array(fresh.slice(10, 50)), whole[:, 10:50])  # redrawn identically


def test_boundary_metric_flags_clicks_not_smooth_joins():
    t = np.arange(SR * 2) / SR
    smooth = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    bounds = list(range(4800, len(t) - 4800, 9600))
    assert abs(boundary_hf_ratio(smooth, bounds, SR) - 1.0) < 0.05
    clicky = smooth.copy()
    for b in bounds:
        clicky[b:] += 0.2  # a step (click) at each seam
    assert boundary_hf_ratio(clicky, bounds, SR) > 1.5  # the threshold for audible seams


def test_jitter_buffer_plays_silence_when_starved():
    buf = JitterBuffer(prebuffer=100)
    buf.write(np.ones(50, np.float32))
    assert not buf.read(10).any()  # still prebuffering
    buf.write(np.ones(60, np.float32))
    assert buf.read(100).sum() == 100 and buf.read(20).sum() == 10 and buf.underruns == 1
    buf.close()
    buf.read(5)
    assert buf.drained.is_set()


def test_cli_stream_writes_the_file_without_a_device(cache, tmp_path, tts):
    out = tmp_path / "s.wav"
    run = run_cli(["speak", TEXT, "--model", "synthetic", "--stream", "--play", "-o", str(out), "--seed", "2",
                   "--max-new-tokens", "20"], cache)
    assert run.returncode == 0, run.stderr
    data, sr = sf.read(out)
    assert sr == SR and len(data) > 0
    ref = tts.generate(TEXT, seed=2, max_new_tokens=20).samples
    assert abs(len(data) - len(ref)) <= StreamConfig().crossfade_samples


def test_stream_config_is_checked():
    with pytest.raises(StreamError):
        StreamConfig(holdback_frames=30, vocoder_context_frames=24).check()
    assert streaming.check_chunk_sizes(1, 1) is None


def test_streamed_mel_is_exact_when_attention_is_local(cache):
    """The streamer's mel path (windows, prompt overlap, absolute-frame noise, settled frames) is exact
    once no layer looks at future frames: with every attention output zeroed, the flow is convs and
    per-frame layers only, and a 50-token window covers their receptive field. What remains of the
    stream/generate() gap with real attention is the attention's dependence on tokens not yet made."""
    from mlx.utils import tree_flatten, tree_unflatten

    from nightingale_mlx.model_io import load_config, load_s3gen
    from nightingale_mlx.synthetic import DEFAULT_VOICE, synthetic_model
    from nightingale_mlx.voice import Voice

    model = synthetic_model(cache / "synthetic")
    s3 = load_s3gen(model, load_config(model))
    local = [(k, mx.zeros_like(v)) for k, v in tree_flatten(s3.flow.parameters())
             if ".linear_out." in k or ".to_out.0." in k]
    assert local  # both the conformer's and the U-Net's attention outputs
    s3.flow.update(tree_unflatten([(f"{k}", v) for k, v in local]))
    voice = Voice.load(model / DEFAULT_VOICE)
    tokens = np.random.default_rng(3).integers(0, 6561, 60).tolist()
    noise = NoiseBuffer(mx.random.key(4), 80, 64)
    frames = 2 * (voice.gen_prompt_token.shape[1] + len(tokens))
    want = np.array(s3.mel(mx.array(tokens), voice, noise=noise.slice(0, frames))[0])
    st = S3GenStreamer(s3, voice, key=mx.random.key(5), noise=noise, keep_mel=True,
                       config=StreamConfig(context_tokens=50))
    list(stream_tokens(s3, iter(tokens), voice, first_chunk_tokens=7, chunk_tokens=9, streamer=st))
    got = np.concatenate(st.mel)
    assert got.shape == want.shape and len(st.mel) >= 6
    np.testing.assert_allclose(got, want, atol=1e-4)
