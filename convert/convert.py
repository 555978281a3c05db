"""Original Chatterbox checkpoint -> converted model dir (config.json + MLX safetensors)."""

import glob
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import mlx.core as mx

from nightingale_mlx import model_io, quant
from nightingale_mlx.config import DEFAULT_PROFILE, T3_CHECKPOINT_FILES, TURBO_VARIANTS, ModelConfig, T3Config
from nightingale_mlx.models.t3 import T3

from .checkpoint import read_weights
from .sanitize import ConversionError, sanitize_t3, t3_dims
from .cloning import cloning_step
from .s3gen import s3gen_step
from .text import text_step
from .voices import voices_step
from .watermark import watermark_step

# Preference when a dir holds several variants (the HF repo holds all three): newest first. Turbo
# and Nano have repos of their own, so a dir with their T3 is theirs.
AUTO_ORDER = ("turbo", "nano", "mtl-v3", "mtl-v2", "en")


def detect_variant(checkpoint: Path, variant: str = "auto") -> str:
    if variant != "auto":
        if variant not in T3_CHECKPOINT_FILES:
            raise ConversionError(f"unknown variant {variant!r}; expected auto, {', '.join(T3_CHECKPOINT_FILES)}")
        if not (checkpoint / T3_CHECKPOINT_FILES[variant]).is_file():
            raise ConversionError(f"{checkpoint}: no {T3_CHECKPOINT_FILES[variant]} for variant {variant}")
        return variant
    for v in AUTO_ORDER:
        if (checkpoint / T3_CHECKPOINT_FILES[v]).is_file():
            return v
    names = ", ".join(T3_CHECKPOINT_FILES.values())
    raise ConversionError(f"{checkpoint}: not a Chatterbox checkpoint dir (none of {names} found)")


def convert_t3(checkpoint: Path, variant: str, recipe: quant.Recipe, overrides: Optional[dict] = None):
    weights = read_weights(checkpoint / T3_CHECKPOINT_FILES[variant])
    dims = t3_dims(weights)
    cfg = T3Config.from_dict({**dims, **(overrides or {})})
    if cfg.is_gpt2 != (variant in TURBO_VARIANTS):
        raise ConversionError(f"the {variant} variant's T3 has a {'Llama' if not cfg.is_gpt2 else 'GPT-2'} "
                              f"backbone here; {'only Turbo/Nano are GPT-2' if not cfg.is_gpt2 else 'GPT-2 is Turbo/Nano'}")
    if not cfg.is_gpt2 and (variant == "en") == cfg.is_multilingual:
        raise ConversionError(
            f"{variant} checkpoint has a text vocabulary of {cfg.text_vocab_size}, which is the other variant's"
        )
    for layer, head in cfg.alignment_heads if cfg.is_multilingual else ():  # only multilingual runs the analyzer
        if layer >= cfg.num_hidden_layers or head >= cfg.num_attention_heads:
            raise ConversionError(
                f"alignment head ({layer}, {head}) is outside the {cfg.num_hidden_layers}-layer, "
                f"{cfg.num_attention_heads}-head backbone; not a full-size Chatterbox T3"
            )
    model = T3(cfg)
    weights = {k: mx.array(v) for k, v in sanitize_t3(weights).items()}
    model_io._load_strict(model, weights, checkpoint / T3_CHECKPOINT_FILES[variant])
    quant.apply(model, recipe.bits["t3"], recipe.group_size, recipe.dtype("t3"))
    return model, cfg


def t3_step(checkpoint: Path, variant: str, recipe: quant.Recipe, config: ModelConfig, out: Path, options: dict):
    model, config.t3 = convert_t3(checkpoint, variant, recipe, options.get("t3_overrides"))
    quant.record_skipped(config.quantization, "t3", model)
    model_io.save_weights(model, out / model_io.T3_FILE)


# Each step converts one component of the checkpoint into the staging dir and fills its config section.
STEPS = {"t3": t3_step, "s3gen": s3gen_step, "cloning": cloning_step, "voices": voices_step, "text": text_step,
         "watermark": watermark_step}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _stamp(old: Path) -> int:
    suffix = old.name.rsplit(".old-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def repair_output(out: Path) -> None:
    """Finishes what a conversion killed mid-way left beside OUT (DESIGN §7).

    Temp dirs `.OUT.tmp-<pid>-*` of dead processes are removed (a live conversion's are kept). If
    OUT is missing but OUT.old-* exist, the newest is renamed back: an old dir only ever holds a
    complete model. Any other OUT.old-* is stale and removed.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        pid = tmp.name[len(out.name) + 6:].split("-")[0]  # after ".OUT.tmp-"
        if not (pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)
    olds = sorted(out.parent.glob(f"{glob.escape(out.name)}.old-*"), key=_stamp)
    if olds and not out.exists():
        os.replace(olds.pop(), out)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_output(out: Path, force: bool):
    """Yields a temp dir beside OUT that replaces OUT only when the block succeeds (DESIGN §7).

    With force: OUT -> OUT.old-<time>, tmp -> OUT, then the old dir is removed, so a kill between
    the renames leaves a complete dir under one of the two names; `repair_output` runs first and
    puts such leftovers right. One conversion per OUT at a time.
    """
    out = Path(out)
    repair_output(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the model dir should look like any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{time.time_ns()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert(
    checkpoint,
    out,
    variant: str = "auto",
    quantize: str = "fp32",
    profile: str = DEFAULT_PROFILE,
    force: bool = False,
    t3_overrides: Optional[dict] = None,
    components=None,
    progress=None,
    watermark=None,
) -> Path:
    """Converts an original checkpoint dir (or HF repo id) into a converted model dir at `out`.

    `quantize` is a recipe (`fp32|fp16|q8|q4` or `t3=4,flow=8,hift=16,cloning=16,group=64`).
    `t3_overrides` sets T3Config fields the tensors cannot tell (e.g. analyzer heads of a test model).
    `components` limits conversion to some of `STEPS` (default: all). `progress(name)` is called
    after each step. `watermark`: a perth_net .pth.tar (default: the installed resemble-perth's).
    """
    recipe = quant.Recipe.parse(quantize)
    checkpoint = _resolve_checkpoint(checkpoint, variant)
    variant = detect_variant(checkpoint, variant)
    components = list(components or STEPS)
    unknown = [c for c in components if c not in STEPS]
    if unknown:
        raise ConversionError(f"unknown components {unknown}; expected {', '.join(STEPS)}")
    config = ModelConfig(variant=variant, profile=profile, quantization=recipe.to_dict())
    options = {"t3_overrides": t3_overrides, "watermark": watermark}
    with staged_output(Path(out), force) as tmp:
        for name in components:
            STEPS[name](checkpoint, variant, recipe, config, tmp, options)
            if progress is not None:
                progress(name)
        model_io.save_config(config, tmp)
    return Path(out)


def _resolve_checkpoint(checkpoint, variant: str) -> Path:
    path = Path(checkpoint)
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{path}: expected a checkpoint directory, got a file")
    if str(checkpoint).count("/") == 1 and not str(checkpoint).startswith((".", "/")):
        from .hub import default_variant, fetch_checkpoint

        return fetch_checkpoint(str(checkpoint), default_variant(str(checkpoint)) if variant == "auto" else variant)
    raise ConversionError(f"{checkpoint}: no such checkpoint dir (or Hugging Face repo id like ResembleAI/chatterbox)")
