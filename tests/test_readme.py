"""The README's Python examples run as written, against the synthetic model.

The only changes are the explicit SUBSTITUTIONS below (the hub model becomes the multilingual
synthetic one, which needs no download); each must still match the README, so a README edit that
drops one fails here instead of silently testing less.
"""

import re
from pathlib import Path

import soundfile as sf

README = Path(__file__).resolve().parents[1] / "README.md"
SUBSTITUTIONS = {'ng.load("ResembleAI/chatterbox")': 'ng.load("synthetic", variant="mtl-v3")'}


def python_blocks(server: bool = False) -> list:
    """The README's Python blocks; the ones that talk to `nightingale serve` (they name a base_url)
    run against a live server in tests/test_server.py instead."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [b for b in blocks if ("base_url=" in b) == server]


def test_readme_python_examples_run(cache, tmp_path, monkeypatch, fixtures_dir):
    monkeypatch.setenv("NIGHTINGALE_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    samples, sr = sf.read(fixtures_dir / "audio" / "speech_odd.flac")
    sf.write("me.wav", samples, sr)  # the README's own recording of "me"
    blocks = python_blocks()
    assert len(blocks) >= 2
    source = "\n".join(blocks)
    for old, new in SUBSTITUTIONS.items():
        assert old in source, f"README no longer contains {old}"
        source = source.replace(old, new)
    played = []
    namespace = {"play": played.append}  # the streaming example's audio sink
    exec(compile(source, str(README), "exec"), namespace)
    assert sf.info("hallo.wav").samplerate == 24000
    assert played and all(len(p) > 0 for p in played)
