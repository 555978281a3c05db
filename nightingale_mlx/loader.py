"""`load()`: a converted dir, an original checkpoint dir or a Hugging Face repo id -> TTS.

Originals are converted once with the default recipe (q8 on Metal, fp32 on CPU) into a cache dir
and reused afterwards.
"""

import hashlib
import os
from pathlib import Path
from typing import Optional

from . import quant
from .model_io import CONFIG_FILE
from .tts import TTS

DEFAULT_MODEL = "ResembleAI/chatterbox"
DEFAULT_VARIANT = "mtl-v3"
# Measured on full-size random weights (README, Quantization): q8 keeps T3's top-1 token 90% of the
# time and the flow's mel at 42 dB; a 4-bit T3 keeps it 14% of the time, so q4 stays opt-in until
# measured on the real weights. MLX's CPU quantized kernels are slow, so CPUs get fp32.
METAL_RECIPE, CPU_RECIPE = "q8", "fp32"
SYNTHETIC = "synthetic"


def cache_root() -> Path:
    """Where converted originals live: $NIGHTINGALE_CACHE, else ~/.cache/nightingale/models."""
    return Path(os.environ.get("NIGHTINGALE_CACHE", Path.home() / ".cache" / "nightingale" / "models"))


def default_recipe() -> str:
    """The recipe originals are converted with when none is given: q8 on Metal, fp32 elsewhere."""
    import mlx.core as mx

    return METAL_RECIPE if mx.metal.is_available() else CPU_RECIPE


def _is_repo_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and not Path(model).exists()


def resolve_model(model: str = DEFAULT_MODEL, variant: Optional[str] = None, quantize: Optional[str] = None) -> Path:
    """The converted model dir for MODEL, converting (and downloading) on first use."""
    from convert.convert import convert

    if model == SYNTHETIC:  # variant and recipe apply as to an original (it is converted like one)
        from .synthetic import cache_name, synthetic_model

        variant, quantize = variant or "en", quantize or "fp32"
        quant.Recipe.parse(quantize)
        return synthetic_model(cache_root() / cache_name(variant, quantize), variant, quantize)
    path = Path(model).expanduser()
    if (path / CONFIG_FILE).is_file():
        if variant or quantize:
            raise ValueError(f"{path} is already converted; --variant/--quantize apply to originals only")
        return path
    recipe = quantize or default_recipe()
    quant.Recipe.parse(recipe)  # a bad recipe fails before any download
    if path.is_dir():
        source = str(path.resolve())
        variant = variant or "auto"
    elif _is_repo_id(model):
        from convert.hub import default_variant

        source = model
        variant = variant or default_variant(model)  # the Turbo/Nano repos hold only their own
    else:
        raise FileNotFoundError(f"{model}: no such model dir, and not a Hugging Face repo id like {DEFAULT_MODEL}")
    tag = hashlib.sha256(source.encode()).hexdigest()[:10]
    out = cache_root() / f"{Path(source).name}-{tag}-{variant}-{recipe.replace(',', '_').replace('=', '')}"
    if not (out / CONFIG_FILE).is_file():
        convert(source, out, variant=variant, quantize=recipe, force=out.exists())
    return out


def load(model: str = DEFAULT_MODEL, variant: Optional[str] = None, quantize: Optional[str] = None,
         profile: Optional[str] = None) -> TTS:
    """Loads a model for speech.

    Args:
        model: a converted model dir, an original checkpoint dir, a Hugging Face repo id
            (default ResembleAI/chatterbox), or "synthetic" (a tiny random model: not speech).
        variant: for originals: en, mtl-v2, mtl-v3, turbo or nano (default mtl-v3 for the hub repo,
            turbo for ResembleAI/chatterbox-turbo; en for "synthetic", whose mtl variants take all
            23 languages).
        quantize: for originals: fp32, fp16, q8, q4 or a per-component recipe.
        profile: upstream (default) or compat-0.1.7.
    """
    return TTS(resolve_model(model, variant, quantize), profile=profile)
