"""Conversion of the cloning models (voice encoder, S3 tokenizer, CAMPPlus) into `cloning.safetensors`."""

from pathlib import Path
from typing import Tuple

import mlx.core as mx

from nightingale_mlx import model_io, quant
from nightingale_mlx.config import CloningConfig, ModelConfig
from nightingale_mlx.voice import CLONING_FILE, CloningModels

from .checkpoint import find_checkpoint_file as find_file
from .checkpoint import read_weights
from .sanitize.cloning import cloning_dims, sanitize_cloning

def convert_cloning(checkpoint, variant: str, recipe: quant.Recipe) -> Tuple[CloningModels, CloningConfig]:
    """Original `ve.*` + `s3gen.*` -> CloningModels (strictly loaded, in the recipe's precision)."""
    checkpoint = Path(checkpoint)
    ve_path, s3gen_path = find_file(checkpoint, "ve", variant), find_file(checkpoint, "s3gen", variant)
    ve, s3gen = read_weights(ve_path), read_weights(s3gen_path)
    cfg = CloningConfig.from_dict(cloning_dims(ve, s3gen))
    models = CloningModels(cfg)
    weights = {k: mx.array(v) for k, v in sanitize_cloning(ve, s3gen).items()}
    model_io._load_strict(models, weights, f"{ve_path.name} + {s3gen_path.name}")
    quant.apply(models, recipe.bits["cloning"], recipe.group_size)
    models.eval()
    return models, cfg


def config_section(cfg: CloningConfig, recipe: quant.Recipe) -> dict:
    """What `load_cloning` reads back from config.json's `cloning` entry."""
    return {"config": cfg.to_dict(), "bits": recipe.bits["cloning"], "group_size": recipe.group_size}


def cloning_step(checkpoint: Path, variant: str, recipe: quant.Recipe, config: ModelConfig, out: Path, options: dict):
    """convert.STEPS entry: writes cloning.safetensors and fills config.cloning."""
    models, cfg = convert_cloning(checkpoint, variant, recipe)
    quant.record_skipped(config.quantization, "cloning", models)
    model_io.save_weights(models, Path(out) / CLONING_FILE)
    config.cloning = config_section(cfg, recipe)
