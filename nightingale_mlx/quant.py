"""Quantization recipes: which components get which precision, shared by convert/ and the loader.

A recipe maps each component to 32 (fp32), 16 (fp16), 8 or 4 bits. Quantized components use MLX
affine group-wise quantization of their Linear and Embedding layers; every other tensor of that
component is fp16. Layers whose input width the group size does not divide stay fp16, explicitly.
"""

from dataclasses import dataclass, field
from typing import Dict

import mlx.core as mx
import mlx.nn as nn

COMPONENTS = ("t3", "flow", "hift", "cloning")
BITS = (32, 16, 8, 4)
GROUP_SIZES = (32, 64, 128)

PRESETS = {
    "fp32": dict(t3=32, flow=32, hift=32, cloning=32),
    "fp16": dict(t3=16, flow=16, hift=16, cloning=16),
    # HiFT is phase-sensitive and the cloning models run once per voice: both stay float.
    "q8": dict(t3=8, flow=8, hift=16, cloning=16),
    "q4": dict(t3=4, flow=8, hift=16, cloning=16),
}


class RecipeError(ValueError):
    pass


@dataclass
class Recipe:
    bits: Dict[str, int] = field(default_factory=lambda: dict(PRESETS["fp32"]))
    group_size: int = 64

    @classmethod
    def parse(cls, text: str) -> "Recipe":
        """`fp32|fp16|q8|q4`, or per component: `t3=4,flow=8,hift=16,cloning=16,group=64`."""
        text = text.strip()
        if text in PRESETS:
            return cls(dict(PRESETS[text]))
        bits, group = dict(PRESETS["fp32"]), 64
        for item in filter(None, text.split(",")):
            name, _, value = item.partition("=")
            name = name.strip()
            try:
                value = int(value)
            except ValueError:
                raise RecipeError(f"bad recipe item {item!r}: expected NAME=NUMBER") from None
            if name == "group":
                group = value
            elif name in COMPONENTS:
                bits[name] = value
            else:
                raise RecipeError(f"unknown recipe component {name!r}; expected {', '.join(COMPONENTS)} or group")
        recipe = cls(bits, group)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name, b in self.bits.items():
            if name not in COMPONENTS or b not in BITS:
                raise RecipeError(f"{name}={b}: bits must be one of {BITS}")
        if self.group_size not in GROUP_SIZES:
            raise RecipeError(f"group={self.group_size}: must be one of {GROUP_SIZES}")

    def describe(self) -> str:
        for name, preset in PRESETS.items():
            if preset == self.bits and self.group_size == 64:
                return name
        return ",".join(f"{k}={v}" for k, v in self.bits.items()) + f",group={self.group_size}"

    def to_dict(self) -> dict:
        return {"recipe": self.describe(), "bits": dict(self.bits), "group_size": self.group_size}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        recipe = cls(dict(d["bits"]), int(d["group_size"]))
        recipe.validate()
        return recipe


def quantizable(group_size: int):
    def predicate(path: str, module: nn.Module) -> bool:
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return False
        return module.weight.shape[-1] % group_size == 0

    return predicate


def apply(module: nn.Module, bits: int, group_size: int) -> None:
    """Puts a component into the recipe's precision, in place.

    The converter calls it on loaded float weights; the loader calls it on the empty skeleton
    before a strict load, so a file that does not match its recipe fails to load.
    """
    module.set_dtype(mx.float32 if bits == 32 else mx.float16)
    if bits in (8, 4):
        nn.quantize(module, group_size=group_size, bits=bits, class_predicate=quantizable(group_size))
