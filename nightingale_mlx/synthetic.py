"""A tiny random-weight model, to try the whole pipeline with no download. It does not speak.

It writes a random checkpoint in the original layout (the reference's key names at tiny sizes, from
`data/synthetic_en.json`), converts it like any download, clones a default voice from a synthetic
buzz, and so exercises conversion -> voice -> T3 -> S3Gen -> wav. Variant `en` (default) speaks
English only; `mtl-v2`/`mtl-v3` take all 23 languages through the real multilingual text front end
(the test suite's synthetic grapheme vocabulary of the real size, 2454); `turbo`/`nano` are a tiny
GPT-2 T3 (Nano smaller), the meanflow S3Gen and a synthetic GPT-2 tokenizer. Real speech needs the
real weights from the Hugging Face hub.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .config import TURBO_SPEECH_VOCAB, TURBO_TEXT_VOCAB
from .random_weights import random_state_dict

DATA = Path(__file__).parent / "data"
SEED = 0
# The tiny T3 has 4 layers: the analyzer's real (12, 15) heads are remapped (unused by en anyway).
T3_OVERRIDES = {"alignment_heads": [[3, 1], [2, 0], [1, 1]]}
VOICE_SECONDS, VOICE_RATE = 4.0, 24000
TURBO_VOICE_SECONDS = 6.0
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


VARIANTS = ("en", "mtl-v2", "mtl-v3", "turbo", "nano")
COMPONENTS = ["t3", "s3gen", "cloning", "text", "watermark"]  # what its conversion writes
MTL_TEXT_VOCAB = 2454  # T3Config.is_multilingual keys on it
MTL_TEXT_TENSORS = ("text_emb.weight", "text_head.weight")


# Tiny GPT-2 T3 sizes (width, layers, heads): Nano is smaller than Turbo, as in the real models.
GPT2_SIZES = {"turbo": (128, 4, 2), "nano": (64, 2, 1)}
GPT2_POSITIONS = 8196  # GPT2_medium's n_positions
MIXER = "flow.decoder.estimator.time_embed_mixer.weight"


def gpt2_t3_spec(width: int, layers: int) -> list:
    """The key list of a Turbo/Nano T3 state dict (tts_turbo's T3(hp) with GPT-2 of this size)."""
    spec = [["tfmr.wte.weight", [TURBO_TEXT_VOCAB, width]], ["tfmr.wpe.weight", [GPT2_POSITIONS, width]]]
    for i in range(layers):
        h = f"tfmr.h.{i}"
        spec += [[f"{h}.ln_1.weight", [width]], [f"{h}.ln_1.bias", [width]],
                 [f"{h}.attn.c_attn.weight", [width, 3 * width]], [f"{h}.attn.c_attn.bias", [3 * width]],
                 [f"{h}.attn.c_proj.weight", [width, width]], [f"{h}.attn.c_proj.bias", [width]],
                 [f"{h}.ln_2.weight", [width]], [f"{h}.ln_2.bias", [width]],
                 [f"{h}.mlp.c_fc.weight", [width, 4 * width]], [f"{h}.mlp.c_fc.bias", [4 * width]],
                 [f"{h}.mlp.c_proj.weight", [4 * width, width]], [f"{h}.mlp.c_proj.bias", [width]]]
    spec += [["tfmr.ln_f.weight", [width]], ["tfmr.ln_f.bias", [width]],
             ["cond_enc.spkr_enc.weight", [width, 256]], ["cond_enc.spkr_enc.bias", [width]],
             ["text_emb.weight", [TURBO_TEXT_VOCAB, width]], ["speech_emb.weight", [TURBO_SPEECH_VOCAB, width]],
             ["text_head.weight", [TURBO_TEXT_VOCAB, width]], ["speech_head.weight", [TURBO_SPEECH_VOCAB, width]],
             ["speech_head.bias", [TURBO_SPEECH_VOCAB]]]
    return [[k, shape, "float32"] for k, shape in spec]


def meanflow_s3gen_spec(s3gen_spec: list) -> list:
    """The meanflow S3Gen: the standard key list plus the decoder's time mixer (spec TURBO §6)."""
    t_dim = next(shape[0] for k, shape, *_ in s3gen_spec if k.endswith("estimator.time_mlp.linear_2.weight"))
    return s3gen_spec + [[MIXER, [t_dim, 2 * t_dim], "float32"]]


def write_checkpoint(directory: Path, variant: str = "en") -> Path:
    """Random tiny weights in the original file names (all safetensors) of VARIANT, with its tokenizer."""
    from safetensors.numpy import save_file

    from .config import T3_CHECKPOINT_FILES

    if variant not in VARIANTS:
        raise ValueError(f"synthetic: unknown variant {variant!r}; expected {', '.join(VARIANTS)}")
    layout = json.loads((DATA / "synthetic_en.json").read_text())
    files = {**layout["files"], "t3": T3_CHECKPOINT_FILES[variant]}
    spec = dict(layout["spec"])
    if variant in GPT2_SIZES:  # Turbo/Nano: a GPT-2 T3, the meanflow S3Gen, the GPT-2 tokenizer files
        from .text.gpt2_files import write_gpt2_tokenizer

        width, layers, _ = GPT2_SIZES[variant]
        spec["t3"] = gpt2_t3_spec(width, layers)
        spec["s3gen"] = meanflow_s3gen_spec(spec["s3gen"])
        files["s3gen"] = "s3gen_meanflow.safetensors"
        write_gpt2_tokenizer(directory)
    elif variant == "en":
        shutil.copy(DATA / "synthetic_tokenizer.json", directory / "tokenizer.json")
    else:  # the multilingual T3 differs only in its text vocabulary
        spec["t3"] = [[k, [MTL_TEXT_VOCAB, shape[1]] if k in MTL_TEXT_TENSORS else shape, *rest]
                      for k, shape, *rest in spec["t3"]]
        shutil.copy(DATA / "synthetic_mtl_tokenizer.json", directory / "grapheme_mtl_merged_expanded_v1.json")
    for part, filename in files.items():
        save_file(random_state_dict(spec[part], SEED), str(directory / filename))
        shutil.copy(DATA / "synthetic_mtl_cangjie.json", directory / "Cangjie5_TC.json")
    return directory


def convert_synthetic(out: Path, variant: str = "en", quantize: str = "fp32", force: bool = False,
                      progress=None, **kwargs) -> Path:
    """Writes the synthetic checkpoint of VARIANT to a temp dir and converts it into OUT."""
    from convert.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp), variant)
        overrides = None if variant in GPT2_SIZES else T3_OVERRIDES
        return convert(ckpt, out, variant=variant, quantize=quantize, components=COMPONENTS,
                       t3_overrides=overrides, force=force, progress=progress, **kwargs)


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
    config = load_config(out)
    seconds = TURBO_VOICE_SECONDS if config.is_turbo else VOICE_SECONDS  # Turbo wants over 5 s
    voice = prepare_voice(load_cloning(out, config.cloning), synthetic_voice_wav(seconds), VOICE_RATE,
                          config.voice_family)
    voice.save(out / DEFAULT_VOICE)
    return out
