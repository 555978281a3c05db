"""The shell product end to end at full size: `nightingale convert` then `nightingale speak` (issue 6).

A full-size random mtl-v3 checkpoint in the original formats (tests/reference/make_checkpoint.py,
reference env, ~3.5 GB) is converted with `nightingale convert`, then `nightingale speak SENTENCE
-l LANG --seed 1 --max-new-tokens 30` runs twice for en, fr, ja and zh (the corpus sentences,
which the synthetic vocabulary covers). Each run must write a valid 24 kHz mono wav of finite,
non-silent audio, and the two runs of a language must be sample-identical. Random weights do not
speak; this proves the real shapes run through every stage and that a seed fixes the output.

    pytest -m "slow and reference" tests/test_e2e_full.py -s     # prints timings; ~4 GB of disk
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.reference.parity import ref_python

pytestmark = [pytest.mark.slow, pytest.mark.reference]

HERE = Path(__file__).resolve().parent
LANGUAGES = ["en", "fr", "ja", "zh"]
CLI = [sys.executable, "-m", "nightingale_mlx"]


def _run(cmd, **kw) -> float:
    start = time.perf_counter()
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert run.returncode == 0, f"{cmd[:4]}... failed:\n{run.stdout[-1000:]}\n{run.stderr[-2000:]}"
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("e2e-full")
    ckpt, model = work / "ckpt", work / "model"
    t = _run([ref_python(), HERE / "reference" / "make_checkpoint.py", "--size", "full", "--variant", "mtl-v3",
              "--seed", "0", "--out", ckpt])
    print(f"\nmake_checkpoint full mtl-v3: {t:.1f} s")
    t = _run([*CLI, "convert", "--checkpoint", ckpt, "--out", model, "--variant", "mtl-v3"])
    print(f"nightingale convert: {t:.1f} s")
    shutil.rmtree(ckpt)  # the original is not needed any more; keep the disk peak down
    return model


@pytest.mark.parametrize("language", LANGUAGES)
def test_speak_full_size_is_deterministic(model_dir, language, tmp_path):
    import soundfile

    corpus = json.loads((HERE / "fixtures" / "text" / "corpus.json").read_text("utf-8"))
    samples = []
    for run in range(2):
        out = tmp_path / f"{language}-{run}.wav"
        t = _run([*CLI, "speak", corpus[language][0], "-m", model_dir, "-l", language, "--seed", "1",
                  "--max-new-tokens", "30", "-o", out])
        info = soundfile.info(str(out))
        wav, sr = soundfile.read(str(out), dtype="float32")
        print(f"speak [{language}] run {run}: {t:.1f} s, {len(wav) / sr:.2f} s of audio")
        assert sr == 24000 and info.channels == 1 and info.format == "WAV"
        assert 0 < len(wav) <= 30 * 960, len(wav)  # at most 30 tokens x 40 ms
        assert np.isfinite(wav).all() and np.abs(wav).max() > 0
        samples.append(wav)
    assert np.array_equal(samples[0], samples[1]), f"{language}: two runs with --seed 1 differ"
