"""S3Gen flow (`flow.*` of s3gen.pt / s3gen.safetensors): names are the reference's, conv layouts by name."""

import re
from typing import Dict

import numpy as np

from .common import ConversionError, conv1d, take_prefix

PREFIX = "flow"

# Tensors under `flow.` that inference never reads; dropped on purpose. The 0.1.7 reference keeps
# none (its CFM noise is drawn per call, not a stored `rand_noise`), so the list is empty.
UNUSED_FLOW = ()

# torch Conv1d weights (O, I, K), by name relative to the flow module; everything else is a Linear,
# LayerNorm, Embedding or bias and keeps its layout.
CONV1D = re.compile(
    r"^(encoder\.pre_lookahead_layer\.conv[12]"
    r"|encoder\.up_layer\.conv"
    r"|decoder\.estimator\.(down|mid|up)_blocks\.\d+\.0\.(block[12]\.block\.0|res_conv)"
    r"|decoder\.estimator\.(down|up)_blocks\.\d+\.2"
    r"|decoder\.estimator\.final_block\.block\.0"
    r"|decoder\.estimator\.final_proj)\.weight$"
)


def sanitize_flow(s3gen_weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The `flow.*` tensors of an S3Gen state dict -> our CausalMaskedDiffWithXvec names (prefix removed)."""
    flow = take_prefix(s3gen_weights, PREFIX)
    if "input_embedding.weight" not in flow:
        raise ConversionError("not a Chatterbox S3Gen checkpoint: no flow.input_embedding.weight")
    out = {}
    for name, w in flow.items():
        if name in UNUSED_FLOW:
            continue
        out[name] = conv1d(w) if CONV1D.match(name) else w
    return out


def flow_dims(weights: Dict[str, np.ndarray], decoder_head_dim: int = 64) -> dict:
    """FlowConfig sizes read from named tensors of an S3Gen state dict (`flow.` prefixed)."""

    def shape(name):
        key = f"{PREFIX}.{name}"
        if key not in weights:
            raise ConversionError(f"not a Chatterbox S3Gen checkpoint: no tensor {key!r}")
        return weights[key].shape

    def count(pattern):
        n = 0
        while f"{PREFIX}.{pattern.format(n)}" in weights:
            n += 1
        return n

    est = "decoder.estimator"
    meanflow = f"{PREFIX}.{est}.time_embed_mixer.weight" in weights
    vocab, input_size = shape("input_embedding.weight")
    output_size, spk_dim = shape("spk_embed_affine_layer.weight")
    heads, _ = shape("encoder.encoders.0.self_attn.pos_bias_u")
    inner = shape(f"{est}.down_blocks.0.1.0.attn1.to_q.weight")[0]
    if inner % decoder_head_dim:
        raise ConversionError(f"decoder attention width {inner} is not a multiple of {decoder_head_dim}")
    channels = [shape(f"{est}.down_blocks.{i}.0.res_conv.weight")[0] for i in range(count(est + ".down_blocks.{}.0.res_conv.weight"))]
    return dict(
        vocab_size=vocab,
        input_size=input_size,
        output_size=output_size,
        spk_embed_dim=spk_dim,
        pre_lookahead_len=shape("encoder.pre_lookahead_layer.conv1.weight")[2] - 1,
        token_mel_ratio=(shape("encoder.up_layer.conv.weight")[2] - 1) // 2,
        encoder_size=shape("encoder_proj.weight")[1],
        encoder_heads=heads,
        encoder_linear_units=shape("encoder.encoders.0.feed_forward.w_1.weight")[0],
        encoder_blocks=count("encoder.encoders.{}.norm_mha.weight"),
        encoder_up_blocks=count("encoder.up_encoders.{}.norm_mha.weight"),
        decoder_channels=channels,
        decoder_heads=inner // decoder_head_dim,
        decoder_head_dim=decoder_head_dim,
        decoder_blocks=count(est + ".down_blocks.0.1.{}.norm1.weight"),
        decoder_mid_blocks=count(est + ".mid_blocks.{}.0.res_conv.weight"),
        # Turbo's distilled decoder is told apart by its time mixer; it runs 2 steps (s3gen.flow_inference).
        meanflow=meanflow,
        n_timesteps=2 if meanflow else 10,
    )
