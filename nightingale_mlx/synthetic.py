"""A tiny random-weight model, to try the whole pipeline with no download. It does not speak.

It writes a random checkpoint in the original layout (the reference's key names at tiny sizes, from
`data/synthetic_en.json`), converts it like any download, clones a default voice from a synthetic
buzz, and so exercises conversion -> voice -> T3 -> S3Gen -> wav. Variant `en` (default) speaks
English only; `mtl-v2`/`mtl-v3` take all 23 languages through the real multilingual text front end
(the test suite's synthetic grapheme vocabulary of the real size, 2454). Real speech needs the
real weights from the Hugging Face hub.
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


VARIANTS = ("en", "mtl-v2", "mtl-v3")
COMPONENTS = ["t3", "s3gen", "cloning", "text"]  # what its conversion writes
MTL_TEXT_VOCAB = 2454  # T3Config.is_multilingual keys on it
MTL_TEXT_TENSORS = ("text_emb.weight", "text_head.weight")


def write_checkpoint(directory: Path, variant: str = "en") -> Path:
    """Random tiny weights in the original file names (all safetensors) of VARIANT, with its tokenizer."""
    from safetensors.numpy import save_file

    from .config import T3_CHECKPOINT_FILES

    if variant not in VARIANTS:
        raise ValueError(f"synthetic: unknown variant {variant!r}; expected {', '.join(VARIANTS)}")
    layout = json.loads((DATA / "synthetic_en.json").read_text())
    files = {**layout["files"], "t3": T3_CHECKPOINT_FILES[variant]}
    spec = dict(layout["spec"])
    if variant != "en":  # the multilingual T3 differs only in its text vocabulary
        spec["t3"] = [[k, [MTL_TEXT_VOCAB, shape[1]] if k in MTL_TEXT_TENSORS else shape, *rest]
                      for k, shape, *rest in spec["t3"]]
    for part, filename in files.items():
        save_file(random_state_dict(spec[part], SEED), str(directory / filename))
    if variant == "en":
        shutil.copy(DATA / "synthetic_tokenizer.json", directory / "tokenizer.json")
    else:
        shutil.copy(DATA / "synthetic_mtl_tokenizer.json", directory / "grapheme_mtl_merged_expanded_v1.json")
        shutil.copy(DATA / "synthetic_mtl_cangjie.json", directory / "Cangjie5_TC.json")
    return directory


def convert_synthetic(out: Path, variant: str = "en", quantize: str = "fp32", force: bool = False,
                      progress=None, **kwargs) -> Path:
    """Writes the synthetic checkpoint of VARIANT to a temp dir and converts it into OUT."""
    from convert.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp), variant)
        return convert(ckpt, out, variant=variant, quantize=quantize, components=COMPONENTS,
                       t3_overrides=T3_OVERRIDES, force=force, progress=progress, **kwargs)


def cache_name(variant: str = "en", quantize: str = "fp32") -> str:
    """The cache dir name of a synthetic model: `synthetic` for the English fp32 one."""
    suffix = "" if variant == "en" else f"-{variant}"
    suffix += "" if quantize == "fp32" else "-" + quantize.replace(",", "_").replace("=", "")
    return f"synthetic{suffix}"


def synthetic_model(out: Path, variant: str = "en", quantize: str = "fp32") -> Path:
    """The synthetic model dir at `out`, built on first use."""
    from .model_io import load_config
    from .voice import load_cloning, prepare_voice

    out = Path(out)
    if (out / DEFAULT_VOICE).is_file():  # written last: the build finished
        return out

    convert_synthetic(out, variant, quantize, force=out.exists())
    voice = prepare_voice(load_cloning(out, load_config(out).cloning), synthetic_voice_wav(), VOICE_RATE)
    voice.save(out / DEFAULT_VOICE)
    return out
