"""Conversion of S3Gen's flow and HiFT vocoder (`s3gen.pt` / `s3gen.safetensors`) into `s3gen.safetensors`."""

from pathlib import Path

import mlx.core as mx

from nightingale_mlx import model_io, quant
from nightingale_mlx.config import FlowConfig, HiFTConfig, ModelConfig
from nightingale_mlx.models.s3gen import S3Gen

from .checkpoint import find_checkpoint_file, read_weights
from .sanitize.flow import flow_dims, sanitize_flow
from .sanitize.hift import hift_dims, sanitize_hift


def convert_s3gen(checkpoint: Path, variant: str, recipe: quant.Recipe):
    path = find_checkpoint_file(checkpoint, "s3gen", variant)
    original = read_weights(path)
    flow_w, hift_w = sanitize_flow(original), sanitize_hift(original)
    flow_cfg, hift_cfg = FlowConfig.from_dict(flow_dims(original)), HiFTConfig.from_dict(hift_dims(hift_w))
    model = S3Gen(flow_cfg, hift_cfg)
    weights = {f"flow.{k}": mx.array(v) for k, v in flow_w.items()}
    weights.update({f"mel2wav.{k}": mx.array(v) for k, v in hift_w.items()})
    model_io._load_strict(model, weights, path)
    quant.apply(model.flow, recipe.bits["flow"], recipe.group_size)
    quant.apply(model.mel2wav, recipe.bits["hift"], recipe.group_size)
    return model, {"flow": flow_cfg.to_dict(), "hift": hift_cfg.to_dict()}


def s3gen_step(checkpoint: Path, variant: str, recipe: quant.Recipe, config: ModelConfig, out: Path, options: dict):
    """convert.STEPS entry: writes s3gen.safetensors (flow + mel2wav) and fills config.s3gen."""
    model, config.s3gen = convert_s3gen(Path(checkpoint), variant, recipe)
    quant.record_skipped(config.quantization, "flow", model.flow)
    model_io.save_weights(model, Path(out) / model_io.S3GEN_FILE)
