"""T3: names are identical to the reference's; two unused tensors are dropped, sizes read by name."""

from typing import Dict

import numpy as np

from nightingale_mlx.config import TURBO_PROMPT_TOKENS

from .common import ConversionError

# Tensors the reference stores but never uses at inference; dropped on purpose.
UNUSED_T3 = (
    "text_head.weight",  # text-token logits: only the training loss reads them
    "tfmr.embed_tokens.weight",  # HF LlamaModel's (8, 1024) dummy; T3 feeds input embeddings
)
UNUSED_T3_GPT2 = (
    "text_head.weight",
    "tfmr.wte.weight",  # GPT-2's token embedding: tts_turbo deletes it after loading
)
# HF GPT-2 stores these Linears as Conv1D, (in, out); MLX Linear wants (out, in).
GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def is_gpt2(weights: Dict[str, np.ndarray]) -> bool:
    """A Turbo/Nano T3: the GPT-2 backbone's learned position table is there."""
    return "tfmr.wpe.weight" in weights


def sanitize_t3(weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """T3 safetensors -> our T3 names (identical), minus the documented unused tensors."""
    gpt2 = is_gpt2(weights)
    unused = UNUSED_T3_GPT2 if gpt2 else UNUSED_T3
    missing = [k for k in unused if k not in weights]
    if missing:
        raise ConversionError(f"not a Chatterbox T3 checkpoint: missing {', '.join(missing)}")
    out = {}
    for k, v in weights.items():
        if k in unused:
            continue
        out[k] = np.ascontiguousarray(v.T) if gpt2 and k.startswith("tfmr.h.") and k.endswith(GPT2_CONV1D) else v
    return out


def t3_dims(weights: Dict[str, np.ndarray], head_dim: int = 64) -> dict:
    """T3Config sizes read from named tensors (sizes only; layouts are fixed by name)."""

    def shape(name):
        if name not in weights:
            raise ConversionError(f"not a Chatterbox T3 checkpoint: no tensor {name!r}")
        return weights[name].shape

    if is_gpt2(weights):
        return gpt2_t3_dims(weights, shape, head_dim)
    hidden = shape("speech_head.weight")[1]
    layers = _count_layers(weights, "tfmr.layers.{}.self_attn.q_proj.weight")
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


def _count_layers(weights: Dict[str, np.ndarray], key: str) -> int:
    """Consecutive blocks 0, 1, ... whose `key.format(i)` tensor exists."""
    layers = 0
    while key.format(layers) in weights:
        layers += 1
    return layers


def gpt2_t3_dims(weights: Dict[str, np.ndarray], shape, head_dim: int) -> dict:
    """Turbo (GPT-2 medium) and Nano (GPT-2 small) alike: every size from the tensors."""
    hidden = shape("speech_head.weight")[1]
    layers = _count_layers(weights, "tfmr.h.{}.attn.c_attn.weight")
    if layers == 0 or hidden % head_dim:
        raise ConversionError(f"unexpected GPT-2 T3 backbone: {layers} layers, width {hidden}")
    inner = shape("tfmr.h.0.mlp.c_fc.weight")[1]
    if inner != 4 * hidden:  # mlx-lm's GPT-2 block hard-codes the 4x MLP
        raise ConversionError(f"GPT-2 T3 MLP width {inner} is not 4 x {hidden}")
    if "cond_enc.perceiver.pre_attention_query" in weights or "cond_enc.emotion_adv_fc.weight" in weights:
        raise ConversionError("a GPT-2 T3 with a perceiver or emotion token is not a Turbo/Nano checkpoint")
    return dict(
        backbone="gpt2",
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inner,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=hidden // head_dim,
        head_dim=head_dim,
        max_positions=shape("tfmr.wpe.weight")[0],
        text_vocab_size=shape("text_emb.weight")[0],
        speech_vocab_size=shape("speech_emb.weight")[0],
        speaker_embed_size=shape("cond_enc.spkr_enc.weight")[1],
        speech_cond_prompt_len=TURBO_PROMPT_TOKENS,
        learned_input_pos=False,
        use_perceiver=False,
        emotion_adv=False,
        speech_head_bias="speech_head.bias" in weights,
        repeat_bos=False,
        bos_always_penalised=False,
        prefill_token_stops=False,
        alignment_heads=[],
    )
