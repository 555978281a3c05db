"""HiFT (`mel2wav.*` in s3gen.pt / s3gen.safetensors): weight norm folded, conv layouts by name."""

import re
from typing import Dict

import numpy as np

from .common import ConversionError, conv1d, conv_transpose1d, fold_weight_norm, take_prefix

PREFIX = "mel2wav"
# Every mel2wav tensor is used; `trim_fade` and `stft_window` are non-persistent (not in the file).
UNUSED_HIFT = ()

# Layouts by module name (after the prefix and weight-norm folding). Anything else is an error.
CONV_TRANSPOSE = re.compile(r"ups\.\d+\.weight")
CONV = re.compile(
    r"(conv_pre|conv_post|source_downs\.\d+|(source_)?resblocks\.\d+\.convs[12]\.\d+"
    r"|f0_predictor\.condnet\.\d+)\.weight"
)
AS_IS = re.compile(
    r"(m_source\.l_linear|f0_predictor\.classifier)\.(weight|bias)|.*\.bias|.*\.activations[12]\.\d+\.alpha"
)


def sanitize_hift(s3gen_weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """S3Gen state dict -> HiFTGenerator weights (names without `mel2wav.`, MLX layouts)."""
    weights = take_prefix(s3gen_weights, PREFIX)
    if "conv_pre.bias" not in weights:
        raise ConversionError("not a Chatterbox S3Gen checkpoint: no mel2wav (HiFT vocoder) tensors")
    weights = fold_weight_norm({k: v for k, v in weights.items() if k not in UNUSED_HIFT})
    out = {}
    for name, w in weights.items():
        if CONV_TRANSPOSE.fullmatch(name):
            out[name] = conv_transpose1d(w)
        elif CONV.fullmatch(name):
            out[name] = conv1d(w)
        elif AS_IS.fullmatch(name):
            out[name] = w
        else:
            raise ConversionError(f"unexpected HiFT tensor mel2wav.{name}; is this a Chatterbox S3Gen checkpoint?")
    return out


def hift_dims(weights: Dict[str, np.ndarray]) -> dict:
    """HiFTConfig sizes read from named tensors (sanitized names); rates and dilations are fixed."""

    def shape(name):
        if name not in weights:
            raise ConversionError(f"not a Chatterbox HiFT: no tensor {name!r}")
        return weights[name].shape

    def kernels(prefix):
        sizes, i = [], 0
        while f"{prefix}.{i}.convs1.0.weight" in weights:
            sizes.append(shape(f"{prefix}.{i}.convs1.0.weight")[1])
            i += 1
        return sizes

    n_up = 0
    while f"ups.{n_up}.weight" in weights:
        n_up += 1
    n_kernels = len(kernels("resblocks")) // max(n_up, 1)
    f0_convs = 0
    while f"f0_predictor.condnet.{2 * f0_convs}.weight" in weights:
        f0_convs += 1
    return dict(
        in_channels=shape("conv_pre.weight")[2],
        base_channels=shape("conv_pre.weight")[0],
        nb_harmonics=shape("m_source.l_linear.weight")[1] - 1,
        upsample_kernel_sizes=[shape(f"ups.{i}.weight")[1] for i in range(n_up)],
        istft_n_fft=shape("conv_post.weight")[0] - 2,
        resblock_kernel_sizes=kernels("resblocks")[:n_kernels],
        source_resblock_kernel_sizes=kernels("source_resblocks"),
        f0_cond_channels=shape("f0_predictor.classifier.weight")[1],
        f0_num_convs=f0_convs,
    )
