"""Reading and writing converted model dirs: `config.json` + one safetensors file per component."""

import json
from pathlib import Path
from typing import Dict, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import quant
from .config import ModelConfig
from .models.t3 import T3

FORMAT_METADATA = {"format": "nightingale-mlx", "format_version": "1"}
CONFIG_FILE = "config.json"
T3_FILE = "t3.safetensors"
S3GEN_FILE = "s3gen.safetensors"


class ModelDirError(ValueError):
    pass


def load_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(f"{model_dir}: no {CONFIG_FILE}; is this a converted model dir? (nightingale convert)")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelDirError(f"{path}: unreadable config ({e}); convert the model again") from e


def save_config(config: ModelConfig, model_dir: Path) -> None:
    (Path(model_dir) / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))


def save_weights(module: nn.Module, path: Path) -> None:
    mx.save_safetensors(str(path), dict(tree_flatten(module.parameters())), metadata=FORMAT_METADATA)


def load_weights(module: nn.Module, path: Path) -> None:
    """Strict load: every parameter present with its shape, nothing extra, our format only."""
    if not Path(path).is_file():
        raise ModelDirError(f"{path}: missing; convert the model again")
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:  # MLX raises bare RuntimeErrors on corrupt files
        raise ModelDirError(f"{path}: unreadable ({e}); convert the model again") from e
    if metadata.get("format") != FORMAT_METADATA["format"]:
        raise ModelDirError(f"{path}: not a nightingale-mlx weights file; convert the original checkpoint")
    _load_strict(module, weights, path)
    quant.check_scales(weights, path)


def _load_strict(module: nn.Module, weights: Dict[str, mx.array], source) -> None:
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    wrong_dtype = [k for k in expected if k in weights and k not in wrong and weights[k].dtype != expected[k].dtype]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (first: {extra[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} with wrong shapes (first: {k} {weights[k].shape} vs {expected[k].shape})")
    if wrong_dtype:
        k = wrong_dtype[0]
        problems.append(f"{len(wrong_dtype)} with wrong dtypes (first: {k} {weights[k].dtype} vs {expected[k].dtype})")
    if problems:
        raise ModelDirError(f"{source}: " + "; ".join(problems))
    module.load_weights(list(weights.items()), strict=True)


def materialize(module: nn.Module) -> None:
    """Evaluates every array a module holds, private ones too (RoPE tables, windows).

    MLX keeps streams per thread: an array still lazy when loading ends can only be evaluated on
    the loading thread, so a model loaded on one thread would fail on every other.
    """
    arrays = []
    for _, m in module.named_modules():
        arrays += [v for v in vars(m).values() if isinstance(v, mx.array)]
        arrays += [v for v in m.values() if isinstance(v, mx.array)]
    mx.eval(arrays)


def recipe_of(config: ModelConfig) -> quant.Recipe:
    try:
        return quant.Recipe.from_dict(config.quantization)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"config.json: bad quantization entry ({e}); convert the model again") from e


def _apply_recipe(module: nn.Module, component: str, config: ModelConfig, recipe: quant.Recipe, model_dir) -> None:
    """Builds the quantized skeleton and checks its fp16 leftovers against the converter's list."""
    skipped = quant.apply(module, recipe.bits[component], recipe.group_size, recipe.dtype(component))
    quant.check_skipped(config.quantization, component, skipped, Path(model_dir) / CONFIG_FILE)


def load_t3(model_dir: Path, config: ModelConfig = None) -> Tuple[T3, ModelConfig]:
    config = config or load_config(model_dir)
    recipe = recipe_of(config)
    model = T3(config.t3)
    _apply_recipe(model, "t3", config, recipe, model_dir)
    load_weights(model, Path(model_dir) / T3_FILE)
    model.eval()
    materialize(model)
    return model, config


def load_s3gen(model_dir: Path, config: ModelConfig = None):
    from .config import FlowConfig, HiFTConfig
    from .models.s3gen import S3Gen

    config = config or load_config(model_dir)
    if not config.s3gen:
        raise ModelDirError(f"{model_dir}: no S3Gen in config.json; convert the model again")
    recipe = recipe_of(config)
    model = S3Gen(FlowConfig.from_dict(config.s3gen["flow"]), HiFTConfig.from_dict(config.s3gen["hift"]))
    _apply_recipe(model.flow, "flow", config, recipe, model_dir)
    _apply_recipe(model.mel2wav, "hift", config, recipe, model_dir)
    load_weights(model, Path(model_dir) / S3GEN_FILE)
    model.eval()
    materialize(model)
    return model
