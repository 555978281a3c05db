"""Voice conversion (TTS.convert_voice / stream_convert_voice / `nightingale vc`) on the synthetic model.

Parity with the reference's ChatterboxVC is tests/test_vc_parity.py; memory is bench/vc_memory.py.
"""

import numpy as np
import pytest
import soundfile as sf

import mlx.core as mx

from nightingale_mlx import vc
from nightingale_mlx.audio.io import AudioError
from nightingale_mlx.streaming import boundary_hf_ratio
from tests.test_reliability import assert_cli_error, run_cli

SOURCE = "speech_odd.flac"  # 2.36 s
TARGET = "speech_long.flac"  # 7.2 s


def speechlike(seconds: float, quiet_at=(), seed: int = 0) -> np.ndarray:
    """16 kHz noise bursts with near-silent stretches at `quiet_at` (start, end) seconds."""
    rng = np.random.default_rng(seed)
    wav = (0.2 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    for a, b in quiet_at:
        wav[int(a * 16000) : int(b * 16000)] *= 1e-3
    return wav


def test_cuts_fall_on_quiet_token_boundaries():
    wav = speechlike(10.0, quiet_at=[(3.1, 3.5), (6.9, 7.3)])
    cuts = vc.cut_points(wav, max_s=4.0, min_s=2.0)
    n = -(-(len(wav) // 160) // 4)
    assert cuts[0] == 0 and cuts[-1] == n == 250
    seconds = np.diff(cuts) * 0.04
    assert seconds.max() <= 4.0 and seconds[:-1].min() >= 2.0
    assert 3.1 <= cuts[1] * 0.04 <= 3.5 and 6.9 <= cuts[2] * 0.04 <= 7.3, cuts
    assert vc.cut_points(wav[:16000 * 3], max_s=4.0, min_s=2.0) == [0, 75]  # short: one piece


def test_piece_tokens_are_the_sources_token_grid(tts):
    """Tokenized in pieces, the tokens count as the whole source's (so the length is kept)."""
    wav = speechlike(5.03, quiet_at=[(2.0, 2.4)])
    cuts = vc.cut_points(wav, max_s=3.0, min_s=1.5)
    tokenizer = tts._cloning_models().tokenizer
    pieces = list(vc.piece_tokens(tokenizer, wav, cuts))
    assert len(pieces) == 2 and sum(map(len, pieces)) == np.array(tokenizer(wav)).shape[1]


def test_one_piece_is_the_reference_computation(tts, fixtures_dir):
    """Up to 30 s: S3Gen.inference on the whole source's tokens (vc.py), cut to the source's length."""
    wav16 = vc.load_source(fixtures_dir / "audio" / SOURCE)[:16000]
    audio = tts.convert_voice(wav16, fixtures_dir / "audio" / TARGET, seed=3, sample_rate=16000, watermark=False)
    tokens = tts._cloning_models().tokenizer(wav16)
    target = vc.target_prompt(tts._cloning_models(), fixtures_dir / "audio" / TARGET)
    _, piece_key = mx.random.split(mx.random.key(3))
    whole = np.array(tts.s3gen.inference(tokens[0], target, key=piece_key))
    n = vc.output_samples(wav16)
    assert audio.info["pieces"] == 1 and audio.sample_rate == 24000
    assert len(audio.samples) == n and abs(n / 24000 - len(wav16) / 16000) <= 0.04
    assert len(whole) - n < 960  # S3Gen renders whole tokens; the cut is under one token
    np.testing.assert_array_equal(audio.samples, whole[:n])  # and so a seed makes it deterministic


@pytest.fixture(scope="module")
def long_run(tts, request):
    """A 4.4 s source converted in 1-2 s pieces (the 30 s pieces scaled down)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(vc, "PIECE_MAX_S", 2.0)
    mp.setattr(vc, "PIECE_MIN_S", 1.0)
    mp.setattr(vc, "STREAM_PIECE_MAX_S", 2.0)
    mp.setattr(vc, "STREAM_PIECE_MIN_S", 1.0)
    request.addfinalizer(mp.undo)
    wav = speechlike(4.4, quiet_at=[(1.5, 1.7), (3.0, 3.2)], seed=1)
    seen = []
    audio = tts.convert_voice(wav, None, seed=5, sample_rate=16000, progress=lambda i, n, k: seen.append((i, n, k)))
    return wav, audio, seen


def test_long_sources_join_in_pieces_without_seams(long_run):
    wav, audio, seen = long_run
    assert [s[:2] for s in seen] == [(0, 3), (1, 3), (2, 3)]
    assert abs(len(audio.samples) / 24000 - len(wav) / 16000) <= 0.04
    assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0
    cuts = np.cumsum([k for _, _, k in seen])[:-1] * 960
    # Seams: the first-difference energy at each join is no rougher than typical audio (1.0).
    assert boundary_hf_ratio(audio.samples, cuts, 24000) < 2.0
    # Nothing lost at the joins: no stretch of zeros (S3Gen's start fade) inside the output.
    frames = np.abs(audio.samples[: len(audio.samples) // 480 * 480]).reshape(-1, 480).max(axis=1)
    assert (frames[1:] > 0).all()


def test_stream_chunks_follow_tokenization_and_match_length(tts, long_run):
    wav, audio, _ = long_run
    calls = []
    tokenizer = tts._cloning_models().tokenizer
    original = type(tokenizer).__call__

    def spy(self, *a, **kw):
        calls.append(len(a[0]))
        return original(self, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(type(tokenizer), "__call__", spy)
    try:
        stream = tts.stream_convert_voice(wav, None, seed=5, sample_rate=16000, first_chunk_tokens=10)
        first = next(stream)
        tokenized_before_first = len(calls)
        rest = list(stream)
    finally:
        mp.undo()
    assert tokenized_before_first == 1 and len(calls) == 3  # audio out before the rest is tokenized
    samples = np.concatenate([first.samples] + [c.samples for c in rest])
    assert len(samples) == len(audio.samples) and rest[-1].is_last
    assert boundary_hf_ratio(samples, np.cumsum([len(first.samples)] + [len(c.samples) for c in rest])[:-1],
                             24000) < 2.0


@pytest.mark.parametrize("make, match", [
    (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "is empty"),
    (lambda p: sf.write(p, np.zeros(32000, np.float32), 16000), "is silent"),
    (lambda p: p.write_text("not audio"), "unreadable"),
    (lambda p: sf.write(p, speechlike(0.2), 16000), "0.20 s is too short"),
    (lambda p: None, "no such audio file"),
])
def test_bad_sources_get_one_line(tmp_path, cache, make, match):
    src = tmp_path / "src.wav"
    make(src)
    with pytest.raises(AudioError, match=match):
        vc.load_source(src)
    if match == "unreadable":  # the CLI's one line (each case takes a process start; one suffices)
        run = run_cli(["vc", str(src), "--model", "synthetic", "-o", str(tmp_path / "o.wav")], cache)
        assert_cli_error(run, match)
        assert not (tmp_path / "o.wav").exists()


def test_targets_are_what_speak_accepts(tts, tmp_path, fixtures_dir):
    """A wav (embedded as vc.py: no loudness normalisation), a baked voice of either family, a name."""
    clip = fixtures_dir / "audio" / TARGET
    target = tts._vc_target(clip)
    assert isinstance(target, vc.GenPrompt) and target.gen_prompt_feat.shape[1] == 360  # 7.2 s at 50 frames/s
    voice = tts.prepare_voice(clip)
    turbo = type(voice)(**{k: getattr(voice, k) for k in ("speaker_emb", "prompt_tokens", "gen_prompt_token",
                                                          "gen_prompt_feat", "gen_embedding")}, family="turbo")
    path = turbo.save(tmp_path / "t.safetensors")
    assert tts._vc_target(path).family == "turbo"  # VC uses only S3Gen's prompt: any family works
    assert tts._vc_target("default") is not None
    with pytest.raises(ValueError, match="no such voice"):
        tts._vc_target(tmp_path / "missing.wav")


def test_cli_vc_streams_to_the_file(cache, tmp_path, fixtures_dir):
    out = tmp_path / "o.wav"
    src = tmp_path / "src.wav"
    sf.write(src, speechlike(1.3), 16000)
    run = run_cli(["vc", str(src), "--model", "synthetic", "--voice", str(fixtures_dir / "audio" / TARGET),
                   "-o", str(out), "--stream", "--play", "--json", "--seed", "1"], cache)
    assert run.returncode == 0, run.stderr
    data, sr = sf.read(out)
    assert sr == 24000 and abs(len(data) / sr - 1.3) <= 0.04 and '"chunks"' in run.stdout
    run = run_cli(["vc", str(src), "--model", "synthetic", "-o", str(out)], cache)  # exists: refused first
    assert_cli_error(run, "exists")


def test_converted_audio_is_watermarked_like_generates(tts, fixtures_dir):
    """convert_voice and its stream end in generate()'s finishing step: Perth's mark, on by default."""
    from nightingale_mlx import watermark as wm

    marker = wm.load()
    wav16 = vc.load_source(fixtures_dir / "audio" / SOURCE)[:32000]
    plain = tts.convert_voice(wav16, None, seed=3, sample_rate=16000, watermark=False).samples
    marked = tts.convert_voice(wav16, None, seed=3, sample_rate=16000).samples
    np.testing.assert_allclose(marked, tts.finish(plain), atol=1e-6)
    assert marker.detect(marked, 24000) >= wm.THRESHOLD > marker.detect(plain, 24000)
    chunks = list(tts.stream_convert_voice(wav16, None, seed=3, sample_rate=16000, first_chunk_tokens=10))
    joined = np.concatenate([c.samples for c in chunks])
    assert len(joined) == len(marked) and chunks[-1].is_last
    assert marker.detect(joined, 24000) >= wm.THRESHOLD
