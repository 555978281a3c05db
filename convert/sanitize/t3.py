"""T3: names are identical to the reference's; two unused tensors are dropped, sizes read by name."""

from typing import Dict

import numpy as np

from .common import ConversionError

# Tensors the reference stores but never uses at inference; dropped on purpose.
UNUSED_T3 = (
    "text_head.weight",  # text-token logits: only the training loss reads them
    "tfmr.embed_tokens.weight",  # HF LlamaModel's (8, 1024) dummy; T3 feeds input embeddings
)


def sanitize_t3(weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """T3 safetensors -> our T3 names (identical), minus the documented unused tensors."""
    missing = [k for k in UNUSED_T3 if k not in weights]
    if missing:
        raise ConversionError(f"not a Chatterbox T3 checkpoint: missing {', '.join(missing)}")
    return {k: v for k, v in weights.items() if k not in UNUSED_T3}


def t3_dims(weights: Dict[str, np.ndarray], head_dim: int = 64) -> dict:
    """T3Config sizes read from named tensors (sizes only; layouts are fixed by name)."""

    def shape(name):
        if name not in weights:
            raise ConversionError(f"not a Chatterbox T3 checkpoint: no tensor {name!r}")
        return weights[name].shape

    hidden = shape("speech_head.weight")[1]
    layers = 0
    while f"tfmr.layers.{layers}.self_attn.q_proj.weight" in weights:
        layers += 1
    if layers == 0 or hidden % head_dim:
        raise ConversionError(f"unexpected T3 backbone: {layers} layers, width {hidden}")
    kv_width = shape("tfmr.layers.0.self_attn.k_proj.weight")[0]
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=shape("tfmr.layers.0.mlp.gate_proj.weight")[0],
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=kv_width // head_dim,
        head_dim=head_dim,
        text_vocab_size=shape("text_emb.weight")[0],
        speech_vocab_size=shape("speech_emb.weight")[0],
        max_text_tokens=shape("text_pos_emb.emb.weight")[0] - 2,
        max_speech_tokens=shape("speech_pos_emb.emb.weight")[0] - 4,
        speaker_embed_size=shape("cond_enc.spkr_enc.weight")[1],
        perceiver_queries=shape("cond_enc.perceiver.pre_attention_query")[1],
    )
