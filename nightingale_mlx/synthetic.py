"""A tiny random-weight model, to try the whole pipeline with no download. It does not speak.

It writes a random checkpoint in the original English layout (the reference's key names at tiny
sizes, from `data/synthetic_en.json`), converts it like any download, clones a default voice from
a synthetic buzz, and so exercises conversion -> voice -> T3 -> S3Gen -> wav. Real speech needs
the real weights from the Hugging Face hub.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .random_weights import random_state_dict

DATA = Path(__file__).parent / "data"
SEED = 0
# The tiny T3 has 4 layers: the analyzer's real (12, 15) heads are remapped (unused by en anyway).
T3_OVERRIDES = {"alignment_heads": [[3, 1], [2, 0], [1, 1]]}
VOICE_SECONDS, VOICE_RATE = 4.0, 24000
DEFAULT_VOICE = Path("voices") / "default.safetensors"


def synthetic_voice_wav(seconds: float = VOICE_SECONDS, sr: int = VOICE_RATE) -> np.ndarray:
    """A voiced buzz with a pitch glide and breath noise: speech-like enough for the cloning models."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    noise = np.random.default_rng(SEED).standard_normal(len(t))
    return (0.3 * envelope * wav / 3 + 0.01 * noise).astype(np.float32)


def write_checkpoint(directory: Path) -> Path:
    """Random tiny weights in the original English file names and formats (all safetensors)."""
    from safetensors.numpy import save_file

    layout = json.loads((DATA / "synthetic_en.json").read_text())
    for part, filename in layout["files"].items():
        save_file(random_state_dict(layout["spec"][part], SEED), str(directory / filename))
    shutil.copy(DATA / "synthetic_tokenizer.json", directory / "tokenizer.json")
    return directory


def synthetic_model(out: Path) -> Path:
    """The synthetic model dir at `out`, built on first use."""
    from convert.convert import convert

    from .voice import load_cloning, prepare_voice

    from .model_io import load_config

    out = Path(out)
    if (out / DEFAULT_VOICE).is_file():  # written last: the build finished
        return out

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp))
        convert(ckpt, out, variant="en", components=["t3", "s3gen", "cloning", "text"],
                t3_overrides=T3_OVERRIDES, force=out.exists())
    voice = prepare_voice(load_cloning(out, load_config(out).cloning), synthetic_voice_wav(), VOICE_RATE)
    voice.save(out / DEFAULT_VOICE)
    return out
