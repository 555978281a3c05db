"""Quantization recipes: which components get which precision, shared by convert/ and the loader.

A recipe maps each component to 32 (fp32), 16 (fp16), 8 or 4 bits. Quantized components use MLX
affine group-wise quantization of their Linear and Embedding layers (T3's linears, embeddings and
head; the flow's conformer and U-Net linears); every other tensor of that component (convs, norms)
is fp16. Layers whose input width the group size does not divide stay fp16 and are listed in
config.json (`quantization.skipped`). HiFT only takes float precisions: it is phase-sensitive.

T3 is the exception to fp16: a reduced-precision T3 stores and computes in `t3_dtype`, bfloat16 by
default for quantized T3 (the reference's config declares bfloat16: trained Llamas carry
activation outliers that fp16's range can overflow; bench/t3_activations.py measures both).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .models.cpu_kernels import use_blas_linears

COMPONENTS = ("t3", "flow", "hift", "cloning")
BITS = (32, 16, 8, 4)
FLOAT_ONLY = {"hift": (32, 16)}
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64
FLOAT_DTYPES = {"fp16": mx.float16, "bf16": mx.bfloat16}

PRESETS = {
    "fp32": dict(t3=32, flow=32, hift=32, cloning=32),
    "fp16": dict(t3=16, flow=16, hift=16, cloning=16),
    # HiFT stays fp32: its phase is sin() of a network output, which turns fp16 rounding into a
    # 12 dB waveform loss at full size (README "Quantization"), for 42 MB. Cloning runs once per voice.
    # The flow stays at 8 bits in q4: peers report a 4-bit flow turning to gibberish, and
    # bench/quantization.py measures it (README table).
    "q8": dict(t3=8, flow=8, hift=32, cloning=16),
    "q4": dict(t3=4, flow=8, hift=32, cloning=16),
}


class RecipeError(ValueError):
    """A recipe string or config.json entry that names no valid precision."""


class QuantizedWeightsError(ValueError):
    """Quantized weights that cannot be right (non-finite scales) or a skeleton that differs from the file's."""


def default_t3_dtype(t3_bits: int) -> str:
    """bf16 for quantized T3 (as the reference declares it), fp16 for the plain fp16 recipe."""
    return "bf16" if t3_bits in (8, 4) else "fp16"


@dataclass
class Recipe:
    bits: Dict[str, int] = field(default_factory=lambda: dict(PRESETS["fp32"]))
    group_size: int = DEFAULT_GROUP_SIZE
    t3_dtype: Optional[str] = None  # T3's float dtype below 32 bits; None: default_t3_dtype

    def __post_init__(self):
        if self.t3_dtype is None:
            self.t3_dtype = default_t3_dtype(self.bits.get("t3", 32))

    @classmethod
    def parse(cls, text: str) -> "Recipe":
        """`fp32|fp16|q8|q4`, or per component: `t3=4,flow=8,hift=16,cloning=16,group=64`, plus
        optionally `t3_dtype=bf16|fp16` (T3's activations and unquantized tensors)."""
        text = text.strip()
        if text in PRESETS:
            return cls(dict(PRESETS[text]))
        bits, group, t3_dtype = dict(PRESETS["fp32"]), DEFAULT_GROUP_SIZE, None
        for item in filter(None, text.split(",")):
            name, _, value = item.partition("=")
            name = name.strip()
            if name == "t3_dtype":
                t3_dtype = value.strip()
                continue
            try:
                value = int(value)
            except ValueError:
                raise RecipeError(f"bad recipe item {item!r}: expected NAME=NUMBER") from None
            if name == "group":
                group = value
            elif name in COMPONENTS:
                bits[name] = value
            else:
                raise RecipeError(f"unknown recipe component {name!r}; expected {', '.join(COMPONENTS)}, group "
                                  f"or t3_dtype")
        recipe = cls(bits, group, t3_dtype)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name, b in self.bits.items():
            allowed = FLOAT_ONLY.get(name, BITS)
            if name not in COMPONENTS or b not in allowed:
                raise RecipeError(f"{name}={b}: bits must be one of {allowed}")
        if self.group_size not in GROUP_SIZES:
            raise RecipeError(f"group={self.group_size}: must be one of {GROUP_SIZES}")
        if self.t3_dtype not in FLOAT_DTYPES:
            raise RecipeError(f"t3_dtype={self.t3_dtype}: must be one of {', '.join(FLOAT_DTYPES)}")

    def describe(self) -> str:
        for name, preset in PRESETS.items():
            if Recipe(dict(preset)) == self:
                return name
        return (",".join(f"{k}={v}" for k, v in self.bits.items()) + f",group={self.group_size}"
                + (f",t3_dtype={self.t3_dtype}" if self.t3_dtype != default_t3_dtype(self.bits["t3"]) else ""))

    def dtype(self, component: str) -> mx.Dtype:
        """The float dtype of a component's unquantized tensors and activations."""
        if self.bits[component] == 32:
            return mx.float32
        return FLOAT_DTYPES[self.t3_dtype] if component == "t3" else mx.float16

    def to_dict(self) -> dict:
        return {"recipe": self.describe(), "bits": dict(self.bits), "group_size": self.group_size,
                "t3_dtype": self.t3_dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        # Dirs converted before t3_dtype existed hold fp16 T3 tensors.
        recipe = cls(dict(d["bits"]), int(d["group_size"]), d.get("t3_dtype", "fp16"))
        recipe.validate()
        return recipe


def _quantizable_type(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding))


def quantizable(group_size: int):
    """nn.quantize predicate: Linear/Embedding layers whose input width the group size divides."""

    def predicate(path: str, module: nn.Module) -> bool:
        return _quantizable_type(module) and module.weight.shape[-1] % group_size == 0

    return predicate


def skipped_layers(module: nn.Module, group_size: int) -> List[str]:
    """Linear/Embedding layers a quantized recipe leaves in fp16 because `group_size` does not divide
    their input width (e.g. T3's emotion projection, 1 wide), sorted by path."""
    return sorted(path for path, m in module.named_modules()
                  if _quantizable_type(m) and m.weight.shape[-1] % group_size != 0)


def apply(module: nn.Module, bits: int, group_size: int, dtype: mx.Dtype = mx.float16) -> List[str]:
    """Puts a component into the recipe's precision, in place; returns the skipped layers' paths.
    `dtype`: the float dtype below 32 bits (Recipe.dtype).

    The converter calls it on loaded float weights; the loader calls it on the empty skeleton
    before a strict load, so a file that does not match its recipe fails to load.
    """
    module.set_dtype(mx.float32 if bits == 32 else dtype)
    skipped = []
    if bits in (8, 4):
        skipped = skipped_layers(module, group_size)
        nn.quantize(module, group_size=group_size, bits=bits, class_predicate=quantizable(group_size))
    use_blas_linears(module)
    return skipped


def record_skipped(quantization: dict, component: str, module: nn.Module) -> None:
    """Converter side: lists a quantized component's fp16 leftovers in config.json's quantization entry."""
    if quantization["bits"][component] in (8, 4):
        quantization.setdefault("skipped", {})[component] = skipped_layers(module, quantization["group_size"])


def check_skipped(quantization: Optional[Mapping], component: str, skipped: List[str], source) -> None:
    """Loader side: the skeleton's skipped layers must be the ones the converter recorded."""
    recorded = ((quantization or {}).get("skipped") or {}).get(component)
    if recorded is not None and sorted(recorded) != skipped:
        raise QuantizedWeightsError(
            f"{source}: the {component} recipe leaves {len(skipped)} layers unquantized but the converter "
            f"recorded {len(recorded)}; the config does not match the weights, convert the model again")


def check_scales(weights: Mapping[str, mx.array], source) -> None:
    """Refuses quantization scales/biases that are not finite (a corrupted file), naming one."""
    names = [k for k in weights if k.endswith((".scales", ".biases"))]
    if not names:
        return
    finite = mx.stack([mx.all(mx.isfinite(weights[k])) for k in names])
    if not bool(mx.all(finite)):
        bad = names[int(mx.argmin(finite.astype(mx.int32)))]
        raise QuantizedWeightsError(f"{source}: quantization tensor {bad} holds NaN/inf; the file is corrupted, "
                                    "convert the model again")


def parameter_dtype(module: nn.Module) -> mx.Dtype:
    """The float dtype a component computes in (its first float, non-quantization parameter)."""
    for name, value in tree_flatten(module.parameters()):
        if mx.issubdtype(value.dtype, mx.floating) and not name.endswith((".scales", ".biases")):
            return value.dtype
    return mx.float32
