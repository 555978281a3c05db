"""Reliability sweep (issue 11, DESIGN §7): every row of docs/reliability.md has a test here or
names one elsewhere. Bad input gets one documented error line; nothing is executed from a file,
lost or half-written.
"""

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from convert.checkpoint import CheckpointError
from convert.convert import convert, repair_output
from convert.sanitize import ConversionError
from nightingale_mlx.audio.clip import Audio
from nightingale_mlx.audio.io import AudioError
from nightingale_mlx.synthetic import synthetic_voice_wav, write_checkpoint
from nightingale_mlx.text import TextError, UnsupportedLanguageError, split_text
from nightingale_mlx.voice import VoiceError
from tests.helpers import in_a_terminal, write_original_t3

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ["t3", "s3gen", "cloning", "text"]  # the synthetic checkpoint has no conds.pt


def one_line(e) -> str:
    message = str(e.value if hasattr(e, "value") else e)
    assert message and "\n" not in message, message
    return message


def run_cli(args, cache, **kw):
    env = {**os.environ, "NIGHTINGALE_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "nightingale_mlx", *args], capture_output=True, text=True,
                          env=env, cwd=kw.pop("cwd", ROOT), **kw)


def assert_cli_error(run, match: str = ""):
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert run.stderr.startswith("nightingale: error: ") and run.stderr.count("\n") == 1, run.stderr
    assert match in run.stderr, run.stderr


# ------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_text_empty_or_blank(tts, text):
    with pytest.raises(ValueError, match="text is empty") as e:
        tts.generate(text)
    one_line(e)


@pytest.mark.parametrize("text", [None, b"bytes", 5])
def test_text_not_a_string(tts, text):
    with pytest.raises(TextError, match="text must be a str") as e:
        tts.generate(text)
    one_line(e)


@pytest.mark.parametrize("text", ["😀🎉🙂", "\x00\x07\x1b[31m hi\x7f \u200b", "Hello 你好 Привет مرحبا שלום."])
def test_text_odd_but_speakable_is_spoken(tts, text):
    """Characters outside the vocabulary become [UNK] (with one warning), as in the reference."""
    audio = tts.generate(text, seed=0, max_new_tokens=4)
    assert audio.samples.size > 0 and np.isfinite(audio.samples).all()


def test_text_100k_characters_is_spoken_sentence_by_sentence(tts):
    sentences = [f"This is sentence number {i}, which goes on for a little while." for i in range(1600)]
    text = " ".join(sentences)[:100_000]
    seen = []

    class Enough(Exception):
        pass

    def progress(i, n, chunk):
        seen.append((i, n, len(chunk)))
        if i == 1:
            raise Enough  # two sentences prove the loop; the rest is the same work repeated

    t0 = time.perf_counter()
    with pytest.raises(Enough):
        tts.generate(text, seed=0, max_new_tokens=3, progress=progress)
    assert time.perf_counter() - t0 < 60
    n = seen[0][1]
    assert [s[0] for s in seen] == [0, 1] and n == len(split_text(text, "en")) > 1000
    # Working memory per step is one sentence, never the whole text; so is a run-on "word".
    assert max(len(c) for c in split_text(text, "en")) < 400
    assert max(len(c) for c in split_text("a" * 100_000, "en")) < 400


# --------------------------------------------------------------------------------- language


def test_language_unknown(tts):
    with pytest.raises(UnsupportedLanguageError, match="'xx' is not supported; pass one of: ar") as e:
        tts.generate("Hi there.", language="xx")
    one_line(e)


def test_language_case_and_spaces_are_normalized(tts):
    a, b = (tts.generate("Hi there.", language=lang, seed=1, max_new_tokens=3).samples for lang in ("en", " EN "))
    assert np.array_equal(a, b)


def test_language_not_spoken_by_this_model(tts):
    with pytest.raises(UnsupportedLanguageError, match="speaks only en.*--variant mtl-v3") as e:
        tts.generate("Bonjour.", language="fr")
    one_line(e)


# ------------------------------------------------------------------------------ voice audio


def _tone(seconds, sr=16000, channels=None):
    wav = synthetic_voice_wav(seconds, sr)
    return wav if channels is None else np.tile(wav[:, None], (1, channels))


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("voices")
    sf.write(d / "full.wav", _tone(2.0), 16000)
    data = (d / "full.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    (d / "text.wav").write_text("I am not audio, just bytes with a .wav name")
    sf.write(d / "silence.wav", np.zeros(48000, np.float32), 16000)
    sf.write(d / "short.wav", _tone(0.2), 16000)
    nan = _tone(2.0)
    nan[1000] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(d / "low.wav", _tone(2.0, 4000), 4000)
    (d / "dir.wav").mkdir()
    return d


@pytest.mark.parametrize("name,error,match", [
    ("missing.wav", VoiceError, "no such voice file"),
    ("dir.wav", AudioError, "is a directory"),
    ("text.wav", AudioError, "unreadable or truncated audio file"),
    ("truncated.wav", AudioError, "truncated"),
    ("silence.wav", AudioError, "is silent"),
    ("short.wav", AudioError, "0.20 s is too short; use at least"),
    ("nan.wav", AudioError, "NaN or infinite samples"),
    ("low.wav", AudioError, "below 8000 Hz"),
])
def test_voice_audio_refused(tts, voice_files, name, error, match):
    with pytest.raises(error, match=match) as e:
        tts.generate("Hi there.", voice=str(voice_files / name))
    one_line(e)


def test_voice_8k_mono_and_96k_six_channels_are_accepted(tts, tmp_path):
    sf.write(tmp_path / "8k.wav", _tone(3.0, 8000), 8000)
    sf.write(tmp_path / "96k6.wav", _tone(3.0, 96000, channels=6), 96000, subtype="FLOAT")
    sf.write(tmp_path / "96k1.wav", _tone(3.0, 96000), 96000, subtype="FLOAT")
    assert tts.prepare_voice(tmp_path / "8k.wav").gen_prompt_feat.shape[1] == 150  # 3 s at 50 frames/s
    six, mono = tts.prepare_voice(tmp_path / "96k6.wav"), tts.prepare_voice(tmp_path / "96k1.wav")
    # Identical channels downmix to the mono signal, so the voices agree (float rounding only).
    np.testing.assert_allclose(np.array(six.gen_prompt_feat), np.array(mono.gen_prompt_feat), atol=1e-4)
    np.testing.assert_allclose(np.array(six.speaker_emb), np.array(mono.speaker_emb), atol=1e-4)


def test_voice_10_minute_clip_is_cropped_fast_and_bounded(tts, tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, _tone(600.0), 16000, subtype="PCM_16")
    tts.prepare_voice(_tone(2.0), 16000)  # loads the cloning models outside the measurement
    ve_input = []
    embed = tts._cloning.ve.embed_wav
    monkeypatch.setattr(tts._cloning.ve, "embed_wav", lambda wav: ve_input.append(wav.size) or embed(wav))
    tracemalloc.start()
    t0 = time.perf_counter()
    voice = tts.prepare_voice(path)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ve_input == [60 * 16000]  # the voice encoder sees 60 s, not 10 minutes
    assert voice.prompt_tokens.shape[1] <= 150 and voice.gen_prompt_feat.shape[1] == 500  # 6 s / 10 s crops
    # The whole clip is resampled once, as the reference does (~1 s here); numpy's peak stays a few
    # copies of the 57 MB 24 kHz clip.
    assert seconds < 30, seconds
    assert peak < 400e6, peak


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture
def en_t3(tmp_path):
    return write_original_t3(tmp_path / "ckpt", "en")


def test_checkpoint_missing_files(tmp_path, en_t3):
    with pytest.raises(ConversionError, match="not a Chatterbox checkpoint dir") as e:
        convert(tmp_path, tmp_path / "o")  # holds only the ckpt dir, no checkpoint files
    one_line(e)
    with pytest.raises(CheckpointError, match="no s3gen.pt or s3gen.safetensors") as e:
        convert(en_t3, tmp_path / "out", components=["t3", "s3gen"])
    one_line(e)
    assert not (tmp_path / "out").exists()


def test_checkpoint_wrong_variant(tmp_path, en_t3):
    with pytest.raises(ConversionError, match="no t3_mtl23ls_v2.safetensors for variant mtl-v2"):
        convert(en_t3, tmp_path / "out", variant="mtl-v2", components=["t3"])
    mtl = write_original_t3(tmp_path / "mtl", "mtl-v2")
    (mtl / "t3_mtl23ls_v2.safetensors").rename(mtl / "t3_cfg.safetensors")
    with pytest.raises(ConversionError, match="which is the other variant's") as e:
        convert(mtl, tmp_path / "out", components=["t3"])
    one_line(e)


def test_checkpoint_truncated_safetensors_via_cli(tmp_path, en_t3, cache):
    t3 = en_t3 / "t3_cfg.safetensors"
    t3.write_bytes(t3.read_bytes()[:5000])
    run = run_cli(["convert", "--checkpoint", str(en_t3), "--out", str(tmp_path / "out")], cache)
    assert_cli_error(run, "t3_cfg.safetensors is truncated (expected")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def _bomb() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}.")
        z.writestr("archive/data/0", bytes(64 << 20))  # 64 MiB of zeros in ~64 KiB
    return buf.getvalue()


@pytest.mark.parametrize("payload", ["code", "bomb"])
def test_hostile_pt_via_cli_runs_nothing_and_leaves_no_trace(tmp_path, en_t3, cache, payload):
    from tests.test_checkpoint import _payloads, _write_zip

    marker = tmp_path / "pwned"
    if payload == "code":
        _write_zip(en_t3 / "s3gen.pt", _payloads(marker)["posix.system"], {"0": bytes(16)})
    else:
        (en_t3 / "s3gen.pt").write_bytes(_bomb())
    before = sorted(p.name for p in tmp_path.iterdir())
    run = run_cli(["convert", "--checkpoint", str(en_t3), "--out", str(tmp_path / "out")], cache, cwd=tmp_path)
    assert_cli_error(run, "s3gen.pt: refused" if payload == "code" else "refused as a zip bomb")
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


# -------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(temperature=float("nan")), "temperature must be >= 0"),
    (dict(top_p=0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(min_p=1.0), r"min_p must be in \[0, 1\)"),
    (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
    (dict(cfg_weight=-0.1), "cfg_weight must be >= 0"),
    (dict(exaggeration=float("nan")), "exaggeration must be a finite number >= 0"),
    (dict(exaggeration=-1), "exaggeration must be a finite number >= 0"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64\)"),
    (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\)"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
])
def test_sampling_out_of_range(tts, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        tts.generate("Hi there.", **kwargs)
    one_line(e)


def test_sampling_out_of_range_via_cli(cache, tts):
    assert_cli_error(run_cli(["speak", "Hi.", "--model", "synthetic", "--top-p", "2"], cache), "top_p must be in")


# ---------------------------------------------------------------------------------- output


def test_output_unwritable_paths(tmp_path):
    audio = Audio(np.zeros(2400, np.float32), 24000, {})
    (tmp_path / "file").write_text("x")
    for path, match in [(tmp_path / "file" / "x.wav", "cannot write there"),
                        (tmp_path / "missing" / "x.wav", "cannot write there"),
                        (tmp_path / "x.mp3", "unsupported output format")]:
        with pytest.raises(AudioError, match=match) as e:
            audio.save(path)
        one_line(e)

def test_voice_output_needs_safetensors(tts, tmp_path):
    with pytest.raises(VoiceError, match="must end in .safetensors"):
        tts.resolve_voice(None).save(tmp_path / "v.bin")


def test_output_unwritable_via_cli(cache, tmp_path, tts):
    (tmp_path / "file").write_text("x")
    run = run_cli(["speak", "Hi.", "--model", "synthetic", "-o", str(tmp_path / "file" / "x.wav")], cache)
    assert_cli_error(run, "is not a writable directory")


# ------------------------------------------------------------------------------------ CLI


def test_cli_debug_shows_the_traceback_and_usage_is_exit_2(cache, tts):
    run = run_cli(["--debug", "speak", "", "--model", "synthetic"], cache)
    assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
    assert "EmptyTextError" in run.stderr or "text is empty" in run.stderr
    run = run_cli(["speak", "Hi.", "--no-such-flag"], cache)
    assert run.returncode == 2 and "usage: nightingale" in run.stderr and "Traceback" not in run.stderr


def test_cli_interrupt_is_exit_130_and_writes_nothing(cache, tmp_path, tts):
    out = tmp_path / "x.wav"
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    # stderr a terminal: speak prints "[i/n]" per sentence; interrupt mid-generation, not during imports
    code, err = in_a_terminal(["speak", text, "--model", "synthetic", "-o", out, "--max-new-tokens", "5"], cache,
                              b"[2/200]", interrupt=True)
    assert code == 130
    assert "Traceback" not in err, err
    assert not out.exists()


# -------------------------------------------------------------------- interrupted conversion

DRIVER = """
import os, signal, sys
from pathlib import Path
ckpt, out, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
from convert.convert import convert
from nightingale_mlx.synthetic import T3_OVERRIDES
real, calls = os.replace, []
def replace(src, dst):  # SIGKILL itself right after the kill_at-th rename involving OUT
    real(src, dst)
    if out.name in (Path(src).name, Path(dst).name):
        calls.append(dst)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
print("ready", flush=True)
convert(ckpt, out, variant="en", components=%r, t3_overrides=T3_OVERRIDES, force=True)
""" % COMPONENTS


def _convert_proc(ckpt, out, kill_after_s=None, kill_at_rename=0):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(ckpt), str(out), str(kill_at_rename)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    return proc


def _digest(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_complete_somewhere(out: Path, ref: dict):
    """OUT, if present, is complete; if absent, the newest OUT.old-* is (DESIGN §7)."""
    olds = sorted(out.parent.glob(f"{out.name}.old-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if out.exists():
        assert _digest(out) == ref
    else:
        assert olds and _digest(olds[-1]) == ref


def test_killed_conversion_leaves_a_complete_dir_and_is_repaired(tmp_path):
    (tmp_path / "ckpt").mkdir()
    ckpt = write_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "model"
    run = _convert_proc(ckpt, out)
    assert run.returncode == 0, run.stderr
    ref = _digest(out)
    rng = random.Random(11)
    # A first conversion killed at a random point: its OUT never appears half-written.
    fresh = tmp_path / "fresh"
    # (a fast machine may finish before the kill: the invariant must hold either way)
    assert _convert_proc(ckpt, fresh, kill_after_s=rng.uniform(0.0, 0.8)).returncode in (0, -signal.SIGKILL)
    assert not fresh.exists() or _digest(fresh) == ref
    repair_output(fresh)
    # Replacing with --force, killed at random points and right after each of the two renames.
    for delay, rename in [(rng.uniform(0.0, 0.8), 0) for _ in range(2)] + [(None, 1), (None, 2)]:
        proc = _convert_proc(ckpt, out, kill_after_s=delay, kill_at_rename=rename)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
        _assert_complete_somewhere(out, ref)
        if rename == 1:  # killed between the renames: OUT is gone, OUT.old-* holds the model
            assert not out.exists()
            repair_output(out)
            assert _digest(out) == ref
    # The next run repairs whatever is left (temp dirs, stale old dirs) and replaces OUT.
    assert _convert_proc(ckpt, out).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) in (["ckpt", "model"], ["ckpt", "fresh", "model"])
    assert _digest(out) == ref


def test_repair_keeps_a_live_conversions_temp_dir(tmp_path):
    out = tmp_path / "m"
    live = tmp_path / f".m.tmp-{os.getppid()}-abc"
    dead = tmp_path / ".m.tmp-999999999-abc"
    for d in (live, dead, out, tmp_path / "m.old-1", tmp_path / "m.old-2"):
        d.mkdir()
    repair_output(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "m"]


# -------------------------------------------------------------------------- threads and long runs


def test_two_threads_share_one_model(tts):
    """generate() is serialized by the model's lock, so threads get exactly the single-threaded output."""
    jobs = [("First thread.", 1), ("Second thread.", 2)]
    single = [tts.generate(t, seed=s, max_new_tokens=3).samples for t, s in jobs]
    results = [None] * len(jobs)

    def work(i):
        results[i] = tts.generate(jobs[i][0], seed=jobs[i][1], max_new_tokens=3).samples

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(np.array_equal(a, b) for a, b in zip(results, single))


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_200_sentences_memory_is_flat_and_nothing_is_lost(tts):
    """200 sentences back to back through generate(): each sentence exactly once, in order, and
    RSS growth <= 1 MB per sentence."""
    sentences = [f"Sentence {i} of the long run." for i in range(200)]
    seen, rss = [], []

    def progress(i, n, chunk):
        seen.append((i, n, chunk))
        rss.append(_rss_mb())

    audio = tts.generate(" ".join(sentences), seed=0, max_new_tokens=4, progress=progress)
    assert [s[0] for s in seen] == list(range(200)) and {s[1] for s in seen} == {200}
    assert [s[2] for s in seen] == sentences and audio.info["sentences"] == 200
    slope = np.polyfit(np.arange(50, 200), np.array(rss[50:]), 1)[0]  # after warm-up
    print(f"RSS slope over sentences 50..199: {slope:.3f} MB/sentence "
          f"({rss[0]:.0f} -> {rss[-1]:.0f} MB; output audio alone is {audio.samples.nbytes / 2**20 / 200:.3f} MB/sentence)")
    assert slope <= 1.0


@pytest.mark.slow
def test_200_sentences_streamed_memory_is_flat_and_no_chunk_lost(tts):
    """The same 200 sentences through stream(): chunk indices run 0..n-1 with no gap or repeat,
    exactly the final chunk is last, and RSS growth <= 1 MB per sentence."""
    text = " ".join(f"Sentence {i} of the long run." for i in range(200))
    indices, rss, lasts = [], [], []
    for chunk in tts.stream(text, seed=0, max_new_tokens=4, first_chunk_tokens=2, chunk_tokens=2):
        indices.append(chunk.index)
        lasts.append(chunk.is_last)
        rss.append(_rss_mb())
    assert indices == list(range(len(indices))) and lasts.count(True) == 1 and lasts[-1]
    per_sentence = len(indices) / 200
    start = len(indices) // 4  # after warm-up
    slope = np.polyfit(np.arange(start, len(rss)), np.array(rss[start:]), 1)[0] * per_sentence
    print(f"stream: {len(indices)} chunks, RSS slope {slope:.3f} MB/sentence ({rss[0]:.0f} -> {rss[-1]:.0f} MB)")
    assert slope <= 1.0
