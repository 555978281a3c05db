"""The first ten minutes with the CLI: green with or without OpenBLAS, errors before the work,
one rule for outputs, text input, the offline message, warnings, the synthetic multilingual model,
progress and Ctrl-C. Most commands run in-process through `cli.main(argv)`, which must be safe there.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from nightingale_mlx import blas
from nightingale_mlx.cli import main
from tests.helpers import in_a_terminal

ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = ["--model", "/no/such/model"]  # an output error must come before this one
LONG = " ".join(f"Sentence number {i} is right here." for i in range(200))


@pytest.fixture
def cli(cache, monkeypatch, capsys):
    """main(argv) in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("NIGHTINGALE_CACHE", str(cache))

    def run(*argv):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line_error(code, err, match=""):
    assert code == 1 and err.startswith("nightingale: error: ") and err.count("\n") == 1, (code, err)
    assert match in err, err
    return err


def no_blas_env(cache, **extra):
    """A machine without OpenBLAS: nothing preloaded and the library path missing."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return {**env, "NIGHTINGALE_OPENBLAS": "/no/such/libblas.so.3", "NIGHTINGALE_CACHE": str(cache), **extra}


# ------------------------------------------------------------------ 1. OpenBLAS, in-process main

def test_in_process_main_never_execs_or_changes_the_environment(cli, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("LD_PRELOAD", raising=False)  # where the old main() re-executed itself
    import mlx_lm  # noqa: F401  (its import sets TRANSFORMERS_NO_ADVISORY_WARNINGS: not ours)

    before = dict(os.environ)
    one_line_error(*cli("speak", "", "--model", "synthetic")[::2])
    assert calls == [] and dict(os.environ) == before


def test_without_openblas_the_note_is_once_per_machine_and_errors_stay_one_line(tmp_path, tts, cache):
    machine = tmp_path / "cache"
    machine.mkdir()
    (machine / "synthetic").symlink_to(cache / "synthetic")  # the built model, a fresh marker
    env = no_blas_env(machine)
    cmd = [sys.executable, "-m", "nightingale_mlx"]
    err = subprocess.run([*cmd, "speak", "", "--model", "synthetic"], env=env, capture_output=True, text=True)
    assert err.returncode == 1 and err.stderr.count("\n") == 1, err.stderr
    runs = [subprocess.run([*cmd, "speak", "Hi there.", "--model", "synthetic", "-o", tmp_path / f"{i}.wav",
                            "--max-new-tokens", "5"], env=env, capture_output=True, text=True) for i in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert "OpenBLAS" in runs[0].stderr and "OpenBLAS" not in runs[1].stderr, [r.stderr for r in runs]
    assert (machine / blas.MARKER).is_file()
    doctor = subprocess.run([*cmd, "doctor"], env=env, capture_output=True, text=True)
    assert doctor.returncode == 0 and "libopenblas0-pthread" in doctor.stdout, doctor.stderr


def test_doctor_reports_device_versions_cache_and_extras(cli, cache):
    code, out, _ = cli("doctor")
    assert code == 0
    for field in ("mlx: ", "device", "cache dir: " + str(cache), "extras: ", "playback", "OpenBLAS: "):
        assert field in out, out


# ------------------------------------------------------------------ 2. outputs checked before the work

@pytest.mark.parametrize("output, match", [
    ("out.mp3", "unsupported output format '.mp3'"),
    (".", "is a directory"),
    ("-", "stdout is not supported"),
    ("/proc/x.wav", "is not a writable directory"),
    ("/no/such/dir/x.wav", "does not exist"),
])
def test_speak_output_is_checked_before_the_model_loads(cli, tmp_path, monkeypatch, output, match):
    monkeypatch.chdir(tmp_path)
    one_line_error(*cli("speak", "Hi.", "-o", output, *NO_MODEL)[::2], match)


def test_voice_out_follows_the_same_rule(cli, tmp_path):
    one_line_error(*cli("voice", "ref.wav", "--out", tmp_path / "no" / "v.safetensors", *NO_MODEL)[::2],
                   "does not exist")
    assert not (tmp_path / "no").exists()
    one_line_error(*cli("voice", "ref.wav", "--out", tmp_path / "v.wav", *NO_MODEL)[::2], ".safetensors")


# ------------------------------------------------------------------ 3. offline

def test_offline_hub_is_one_complete_actionable_line(cli, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kw):  # the hub's real message spans lines
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub.\n"
                                      "Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    err = one_line_error(*cli("speak", "Hi.", "-o", "/tmp/nightingale-offline.wav", "--force",
                              "--model", "ResembleAI/not-cached")[::2])
    assert "cannot reach the Hugging Face hub" in err and "--model synthetic" in err and "-m DIR" in err


# ------------------------------------------------------------------ 4. synthetic multilingual, flags

def test_synthetic_multilingual_speaks_french_from_the_cli(cli, tmp_path):
    out = tmp_path / "fr.wav"
    code, _, err = cli("speak", "Bonjour tout le monde.", "-l", "fr", "--model", "synthetic", "--variant", "mtl-v3",
                       "-o", out, "--max-new-tokens", "10", "--seed", "0")
    assert code == 0, err
    assert sf.info(str(out)).samplerate == 24000


def test_synthetic_multilingual_takes_all_23_languages(cache, monkeypatch, fixtures_dir):
    import json

    import nightingale_mlx as ng
    from nightingale_mlx.text.languages import SUPPORTED_LANGUAGES

    monkeypatch.setenv("NIGHTINGALE_CACHE", str(cache))
    tts = ng.load("synthetic", variant="mtl-v3")
    corpus = json.loads((fixtures_dir / "text" / "corpus.json").read_text(encoding="utf-8"))
    assert sorted(corpus) == sorted(SUPPORTED_LANGUAGES) and len(corpus) == 23
    for lang, texts in corpus.items():
        ids = tts.tokenizer.text_tokens(texts[0], lang)
        assert tts.tokenizer.unk_id not in ids, lang  # the real front end, fully covered
        assert tts.generate(texts[0], language=lang, seed=0, max_new_tokens=3).samples.size > 0, lang


@pytest.mark.parametrize("args, match", [
    (["--model", "synthetic", "--quantize", "nonsense"], "--quantize nonsense"),
    (["--model", "synthetic", "--quantize", "q3"], "--quantize q3"),
])
def test_bad_model_flags_are_errors_not_ignored(cli, tmp_path, args, match):
    one_line_error(*cli("speak", "Hi.", "-o", tmp_path / "x.wav", *args)[::2], match)


def test_flags_for_originals_are_refused_with_a_converted_dir(cli, tmp_path, tts, cache):
    one_line_error(*cli("speak", "Hi.", "-o", tmp_path / "x.wav", "--model", cache / "synthetic",
                        "--variant", "en")[::2], "apply to originals only")


def test_convert_takes_the_synthetic_checkpoint_by_name(cli, tmp_path):
    out = tmp_path / "mtl"
    code, _, err = cli("convert", "--checkpoint", "synthetic", "--variant", "mtl-v2", "--out", out)
    assert code == 0, err
    import json

    assert json.loads((out / "config.json").read_text())["variant"] == "mtl-v2"


def test_quality_takes_the_synthetic_model_by_name(cli, tts):
    import json

    code, out, err = cli("quality", "-m", "synthetic", "--ref", "synthetic", "--steps", "2", "--no-memory", "--json")
    assert code == 0, err
    assert json.loads(out)["t3"]["top1_agreement"] == 1.0


# ------------------------------------------------------------------ 7. one overwrite rule, same bytes

def test_outputs_are_replaced_only_with_force(cli, tmp_path, tts):
    out = tmp_path / "x.wav"
    out.write_bytes(b"keep me")
    one_line_error(*cli("speak", "Hi.", "-o", out, *NO_MODEL)[::2], "pass --force")
    assert out.read_bytes() == b"keep me"
    voice = tmp_path / "v.safetensors"
    voice.write_bytes(b"keep me")
    one_line_error(*cli("voice", "ref.wav", "--out", voice, *NO_MODEL)[::2], "pass --force")
    code, _, err = cli("speak", "Hi.", "-o", out, "--model", "synthetic", "--force", "--max-new-tokens", "5")
    assert code == 0 and sf.info(str(out)).frames > 0, err


def test_same_seed_same_bytes_16_bit_by_default_float_on_request(cli, tmp_path, tts):
    def speak(name, *extra):
        out = tmp_path / name
        code, _, err = cli("speak", "Hello there.", "--model", "synthetic", "-o", out, "--seed", "3",
                           "--max-new-tokens", "8", *extra)
        assert code == 0, err
        return out

    a = speak("a.wav")
    time.sleep(1.1)  # the PEAK chunk's timestamp has a one-second resolution
    b = speak("b.wav")
    assert sf.info(str(a)).subtype == "PCM_16" and a.read_bytes() == b.read_bytes()
    fa = speak("fa.wav", "--float")
    time.sleep(1.1)
    fb = speak("fb.wav", "--float")
    assert sf.info(str(fa)).subtype == "FLOAT"
    assert hashlib.sha256(fa.read_bytes()).digest() == hashlib.sha256(fb.read_bytes()).digest()


# ------------------------------------------------------------------ 8. text input, --debug anywhere

def test_text_and_file_together_is_an_error(cli, tmp_path):
    (tmp_path / "t.txt").write_text("From the file.")
    one_line_error(*cli("speak", "Hi", "-f", tmp_path / "t.txt", *NO_MODEL)[::2], "not both")


def test_bad_text_files_are_named(cli, tmp_path):
    one_line_error(*cli("speak", "-f", tmp_path / "missing.txt", *NO_MODEL)[::2], "missing.txt: no such file")
    (tmp_path / "b.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    one_line_error(*cli("speak", "-f", tmp_path / "b.bin", *NO_MODEL)[::2], "b.bin: is a binary file")
    (tmp_path / "l1.txt").write_bytes("caf\xe9".encode("latin-1"))
    one_line_error(*cli("speak", "-f", tmp_path / "l1.txt", *NO_MODEL)[::2], "l1.txt: not UTF-8")


def test_debug_works_after_the_subcommand(cli):
    with pytest.raises(Exception, match="text is empty"):
        cli("speak", "", "--model", "synthetic", "--debug")


# ------------------------------------------------------------------ 6. one concise warning per run

def test_unknown_characters_warn_once_with_the_prefix(cli, tmp_path, tts):
    text = " ".join(f"The street {i} is called Straße in German." for i in range(3))
    code, _, err = cli("speak", text, "--model", "synthetic", "-o", tmp_path / "x.wav", "--max-new-tokens", "4")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "[UNK]" in line]
    assert len(warnings) == 1 and warnings[0].startswith("nightingale: warning: "), err


# ------------------------------------------------------------------ 5. progress, Ctrl-C

def test_progress_on_a_terminal_quiet_otherwise(cache, tmp_path, tts):
    text = "One sentence is here now. Another sentence is here now. A third sentence is here now."
    code, err = in_a_terminal(["speak", text, "--model", "synthetic", "-o", tmp_path / "x.wav",
                                "--max-new-tokens", "12"], cache, b"wrote", interrupt=False)
    assert code == 0, err
    assert "[3/3] sentences" in err and "tokens" in err and "RTF" in err, err
    code, err = in_a_terminal(["speak", text, "--model", "synthetic", "-o", tmp_path / "y.wav", "--quiet",
                                "--max-new-tokens", "12"], cache, b"wrote", interrupt=False)
    assert code == 0 and "sentences" not in err, err


def test_ctrl_c_says_one_line_and_stream_keeps_what_was_made(cache, tmp_path, tts):
    out = tmp_path / "s.wav"
    code, err = in_a_terminal(["speak", LONG, "--model", "synthetic", "--stream", "-o", out,
                                "--max-new-tokens", "30"], cache, b"s of speech", interrupt=True)
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted; kept" in err and str(out) in err, err
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.frames > 0
    out = tmp_path / "g.wav"
    code, err = in_a_terminal(["speak", LONG, "--model", "synthetic", "-o", out, "--max-new-tokens", "5"],
                               cache, b"[2/", interrupt=True)
    assert code == 130 and "nightingale: interrupted; nothing written" in err and not out.exists(), err
