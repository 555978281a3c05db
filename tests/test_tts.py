"""End to end on the synthetic model: load -> voice -> T3 -> S3Gen -> wav, the CLI, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import nightingale_mlx as ng
from nightingale_mlx.tts import trim_trailing_silence

TEXT = "Hello world. This is a test of the synthetic model."


def test_generate_is_deterministic_24k_audio(tts):
    a = tts.generate(TEXT, language="en", seed=3, max_new_tokens=20)
    b = tts.generate(TEXT, language="en", seed=3, max_new_tokens=20)
    c = tts.generate(TEXT, language="en", seed=4, max_new_tokens=20)
    assert a.sample_rate == 24000 and a.samples.dtype == np.float32
    assert np.array_equal(a.samples, b.samples) and not np.array_equal(a.samples, c.samples)
    assert np.isfinite(a.samples).all() and np.abs(a.samples).max() <= 1.0
    assert a.info["sentences"] == 1 and 0 < a.info["speech_tokens"] <= 20
    assert a.duration > 0.1


def test_cloned_voice_round_trips_and_is_used(tts, tmp_path, fixtures_dir):
    voice = tts.prepare_voice(fixtures_dir / "audio" / "speech_odd.flac")
    path = voice.save(tmp_path / "v.safetensors")
    a = tts.generate("Short test.", voice=ng.Voice.load(path), seed=1, max_new_tokens=10)
    b = tts.generate("Short test.", voice=str(path), seed=1, max_new_tokens=10)
    d = tts.generate("Short test.", seed=1, max_new_tokens=10)
    assert np.array_equal(a.samples, b.samples) and not np.array_equal(a.samples, d.samples)


def test_voices_and_their_t3_prefix_are_kept_between_requests(tts, tmp_path, fixtures_dir):
    """A voice file is loaded (a clip cloned) once while it is unchanged, and a voice's second
    request reuses T3's stored conditioning keys/values: the audio is bit-identical to the first's."""
    path = tts.prepare_voice(fixtures_dir / "audio" / "speech_odd.flac").save(tmp_path / "v.safetensors")
    voice = tts.resolve_voice(str(path))
    assert tts.resolve_voice(str(path)) is voice and tts.resolve_voice(None) is tts.resolve_voice(None)
    first = tts.generate("Short test.", voice=str(path), seed=2, max_new_tokens=10)
    (_, prefix), = [(k, c[2]) for k, c in tts._conds.items() if c[0] is voice]
    assert prefix  # stored by the first request
    again = tts.generate("Short test.", voice=str(path), seed=2, max_new_tokens=10)
    assert np.array_equal(first.samples, again.samples)
    os.utime(path, ns=(0, 0))  # the file changed: loaded again
    assert tts.resolve_voice(str(path)) is not voice


def test_bad_input_is_refused(tts):
    with pytest.raises(ValueError, match="empty"):
        tts.generate("   ")
    with pytest.raises(ValueError, match="not supported"):
        tts.generate("Hi there.", language="xx")
    with pytest.raises(ValueError, match="the English model speaks only en"):
        tts.generate("Bonjour.", language="fr")
    with pytest.raises(ValueError, match="no such voice"):
        tts.generate("Hi there.", voice="/no/such.wav")
    with pytest.raises(ValueError, match="temperature"):
        tts.generate("Hi there.", temperature=-1)


def test_trailing_silence_is_trimmed_with_a_tail():
    sr = 24000
    wav = np.concatenate([np.sin(np.arange(sr) * 0.05), np.zeros(2 * sr)]).astype(np.float32)
    out = trim_trailing_silence(wav, sr)
    assert sr <= len(out) <= sr + int(0.12 * sr)
    assert len(trim_trailing_silence(wav[:sr], sr)) == sr


def run_cli(args, cache, **kw):
    env = {**os.environ, "NIGHTINGALE_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "nightingale_mlx", *args], capture_output=True, text=True,
                          env=env, **kw)


def test_cli_speak_writes_a_wav_and_json(cache, tmp_path, tts):
    out = tmp_path / "x.wav"
    run = run_cli(["speak", TEXT, "--model", "synthetic", "-o", str(out), "--seed", "1",
                   "--max-new-tokens", "15", "--json"], cache)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout.strip().splitlines()[-1])
    data, sr = sf.read(out)
    assert sr == 24000 and len(data) == round(info["audio_s"] * sr) and info["output"] == str(out)


def test_cli_reads_stdin_and_bakes_voices(cache, tmp_path, fixtures_dir, tts):
    voice = tmp_path / "v.safetensors"
    run = run_cli(["voice", str(fixtures_dir / "audio" / "speech_odd.flac"), "--out", str(voice),
                   "--model", "synthetic"], cache)
    assert run.returncode == 0 and voice.is_file(), run.stderr
    out = tmp_path / "y.flac"
    run = run_cli(["speak", "--model", "synthetic", "--voice", str(voice), "-o", str(out),
                   "--max-new-tokens", "10"], cache, input="Text from standard input.")
    assert run.returncode == 0, run.stderr
    assert sf.info(str(out)).samplerate == 24000


@pytest.mark.parametrize("args", [
    ["speak", "", "--model", "synthetic"],
    ["speak", "Hi.", "-l", "xx", "--model", "synthetic"],
    ["speak", "Hi.", "--voice", "/no/such.wav", "--model", "synthetic"],
    ["speak", "Hi.", "--model", "/no/such/model"],
    ["speak", "Hi.", "--model", "synthetic", "-o", "/no/such/dir/x.wav"],
])
def test_cli_errors_are_one_line(cache, args, tts):
    run = run_cli(args, cache)
    assert run.returncode == 1
    assert run.stderr.startswith("nightingale: error: ") and run.stderr.count("\n") == 1, run.stderr


def test_default_recipe_follows_the_device(monkeypatch):
    import mlx.core as mx

    from nightingale_mlx import loader

    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    assert loader.default_recipe() == "q8"
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    assert loader.default_recipe() == "fp32"
