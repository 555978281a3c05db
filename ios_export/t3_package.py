"""T3 as a stateful multifunction Core ML package: prefill (one function per text slot) + decode.

The KV cache is one fp16 state pair per layer, (2, H, context, Dh), row 0 the conditioned and
row 1 the unconditioned (CFG) sequence. Quantized Linear/Embedding weights become
`constexpr_blockwise_shift_scale` built from MLX's own integer codes and fp16 scales: MLX decodes
`w = s*q + b`, Core ML `scale*(data - offset)`, so `offset = -b/s`, stored in fp32 (the op allows
float offsets) so that the only difference from MLX's weights is fp16 rounding of the product.

Sequence layout of a prefill with text slot T (the app pads the text ids to T):
    [cond (34) | text (L) | BOS BOS | padding (T - L)]  ->  logits after the second BOS.
Padding rows land in the cache past the real sequence; decode overwrites them one by one and the
causal masks never let a real query see them.

The GPT-2 T3 (Turbo/Nano) is the same package from config branches: batch 1 (no CFG), LayerNorm,
fused c_attn with biases, tanh GELU, speech head with bias, and GPT-2's learned positions wpe[row]
instead of RoPE (rows are absolute positions, so decode's `position` indexes wpe). Its conditioning
length varies with the voice's prompt (1 + up to 375 tokens): prefill takes `cond` padded to a
cond slot plus `cond_len`, and gathers [cond | text | BOS | padding] rows from one table.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

FUNCTION_DECODE = "decode"


class T3ExportError(ValueError):
    """The T3 model cannot be exported as asked."""


def weight_op_name(path: str) -> str:
    """MIL name of the weight op of MLX module `path` (verify maps it back to check the codes)."""
    return path.replace(".", "__")


def module_path(op_name: str) -> str:
    return op_name.replace("__", ".")


def prefill_name(text_slot: int) -> str:
    return f"prefill_{text_slot}"


@dataclass
class QuantizedWeight:
    """One MLX quantized matrix as Core ML blockwise data: codes (O, I) uint8, scale/offset (O, I/g)."""

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    bits: int


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """MLX packs codes little-endian into uint32 words, lowest bits first: (O, I*bits/32) -> (O, I)."""
    raw = np.ascontiguousarray(packed).view(np.uint8)  # little-endian bytes, in code order
    if bits == 8:
        return raw
    if bits == 4:
        return np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(raw.shape[0], -1)
    raise T3ExportError(f"{bits}-bit codes: only 4 and 8 bits map to Core ML int4/int8")


def quantized_weight(module: nn.Module) -> QuantizedWeight:
    """Codes, fp16 scales and fp32 offsets (= -bias/scale) of an MLX QuantizedLinear/Embedding.

    bf16 scales (the q8/q4 recipes' T3) become fp16 exactly within fp16's normal range: bf16 has
    fewer significand bits; the offset is computed from the fp16 scale, so s*q + b is kept.
    """
    if module.scales.dtype not in (mx.float16, mx.bfloat16):
        raise T3ExportError(f"quantized scales are {module.scales.dtype}; expected fp16/bf16 (the q4/q8 recipes)")
    scales = np.array(module.scales.astype(mx.float32)).astype(np.float16)
    biases = np.array(module.biases.astype(mx.float32))
    if not np.isfinite(scales).all():
        raise T3ExportError("quantized scales overflow fp16; re-quantize with a smaller group size")
    codes = unpack_codes(np.array(module.weight), module.bits)
    s64, b64 = scales.astype(np.float64), biases.astype(np.float64)
    degenerate = (s64 == 0) & (b64 != 0)
    if degenerate.any():  # scale 0 cannot reproduce a nonzero constant group through (q - offset)
        raise T3ExportError(f"{int(degenerate.sum())} weight groups have scale 0; re-quantize with another group size")
    offset = np.where(s64 == 0, 0.0, -b64 / np.where(s64 == 0, 1.0, s64)).astype(np.float32)
    return QuantizedWeight(codes, scales, offset, module.bits)


def _weight(mb, module: nn.Module, name: str, rows=None):
    """A module's (O, I) weight as a MIL var: blockwise constexpr if quantized, else an fp16 const.

    `rows` keeps the first rows only (GPT-2's wpe has 8196 positions; the package needs `context`)."""
    from coremltools.converters.mil.mil import types

    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        q = quantized_weight(module)
        dtype = types.np_uint4_dtype if q.bits == 4 else np.uint8
        return mb.constexpr_blockwise_shift_scale(
            data=q.codes[:rows].astype(dtype), scale=q.scale[:rows], offset=q.offset[:rows], name=name
        )
    return mb.const(val=np.array(module.weight.astype(mx.float32))[:rows].astype(np.float16), name=name)


def rope_tables(attn, head_dim: int, context: int):
    """(context, Dh) cos and sin tables from MLX's own RoPE module (Llama-3 scaled frequencies).

    Rotating x = [1..1, 0..0] yields [cos | sin] per position, so the tables are MLX's exact values.
    """
    half = head_dim // 2
    x = mx.concatenate([mx.ones((half,)), mx.zeros((half,))])
    rotated = np.array(attn.rope(mx.broadcast_to(x, (1, 1, context, head_dim)).astype(mx.float32)))[0, 0]
    cos, sin = rotated[:, :half], rotated[:, half:]
    return np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)


class _Graph:
    """Emits T3's ops into the MIL program being built (one instance per function)."""

    def __init__(self, mb, t3, context: int):
        self.mb, self.t3, self.cfg = mb, t3, t3.cfg
        self.context = context
        self.gpt2 = self.cfg.is_gpt2
        self.B = batch_size(self.cfg)
        self.n_heads = self.cfg.num_attention_heads
        self.head_dim = head_dim(self.cfg)
        if not self.gpt2:
            self.cos, self.sin = rope_tables(t3.tfmr.layers[0].self_attn, self.head_dim, context)

    def w(self, module, path, rows=None):
        return _weight(self.mb, module, weight_op_name(path), rows)

    def b(self, module):
        """A Linear's bias as an fp16 const (the linear runs in fp16)."""
        return np.array(module.bias.astype(mx.float32)).astype(np.float16)

    def norm(self, x, module):
        """RMSNorm (Llama) or LayerNorm (GPT-2), in fp32: statistics of fp16 activations can overflow."""
        if not isinstance(module, nn.LayerNorm):
            return self.rms_norm(x, module)
        f32 = lambda a: np.array(a.astype(mx.float32))  # noqa: E731
        return self.f16(self.mb.layer_norm(x=self.f32(x), axes=[-1], gamma=f32(module.weight), beta=f32(module.bias),
                                           epsilon=np.float32(module.eps)))

    def f32(self, x):
        return self.mb.cast(x=x, dtype="fp32")

    def f16(self, x):
        return self.mb.cast(x=x, dtype="fp16")

    def rms_norm(self, x, module):
        """In fp32, as mx.fast.rms_norm: mean squares of fp16 activations can overflow fp16."""
        mb = self.mb
        x32 = self.f32(x)
        ms = mb.reduce_mean(x=mb.mul(x=x32, y=x32), axes=[-1], keep_dims=True)
        weight = np.array(module.weight.astype(mx.float32))
        return self.f16(mb.mul(x=mb.mul(x=x32, y=mb.rsqrt(x=ms, epsilon=float(module.eps))), y=weight))

    def rope(self, x, cos, sin):
        """Non-traditional (split-half) RoPE in fp32 on (B, H, S, Dh); cos/sin are (S, Dh) fp32."""
        mb, half = self.mb, self.head_dim // 2
        x32 = self.f32(x)
        x1 = mb.slice_by_index(x=x32, begin=[0, 0, 0, 0], end=[0, 0, 0, half], end_mask=[True, True, True, False])
        x2 = mb.slice_by_index(x=x32, begin=[0, 0, 0, half], end=[0, 0, 0, 0], end_mask=[True] * 4)
        rotated = mb.concat(values=[mb.mul(x=x2, y=-1.0), x1], axis=-1)
        return self.f16(mb.add(x=mb.mul(x=x32, y=cos), y=mb.mul(x=rotated, y=sin)))

    def heads(self, x, S):
        """(B, S, H*Dh) -> (B, H, S, Dh)."""
        mb = self.mb
        return mb.transpose(x=mb.reshape(x=x, shape=[self.B, S, self.n_heads, self.head_dim]), perm=[0, 2, 1, 3])

    def gpt2_layer(self, i, layer, x, S, attend):
        """One GPT-2 block (pre-LN): fused c_attn split into q|k|v, tanh GELU MLP, biases everywhere."""
        mb, attn, name, D = self.mb, layer.attn, f"tfmr.h.{i}", self.cfg.hidden_size
        h = self.norm(x, layer.ln_1)
        qkv = mb.linear(x=h, weight=self.w(attn.c_attn, f"{name}.attn.c_attn"), bias=self.b(attn.c_attn))
        q, k, v = (self.heads(mb.slice_by_index(x=qkv, begin=[0, 0, j * D], end=[self.B, S, (j + 1) * D]), S)
                   for j in range(3))
        keys, values, mask = attend(i, k, v)
        o = mb.scaled_dot_product_attention(query=q, key=keys, value=values, attn_mask=mask)
        o = mb.reshape(x=mb.transpose(x=o, perm=[0, 2, 1, 3]), shape=[self.B, S, D])
        x = mb.add(x=x, y=mb.linear(x=o, weight=self.w(attn.c_proj, f"{name}.attn.c_proj"), bias=self.b(attn.c_proj)))
        h = self.norm(x, layer.ln_2)
        mlp = layer.mlp
        # tanh GELU in fp32: its x**3 overflows fp16 beyond |x| ~ 40 (GPT-2 has large activations).
        h = self.f16(mb.gelu(x=self.f32(mb.linear(x=h, weight=self.w(mlp.c_fc, f"{name}.mlp.c_fc"),
                                                  bias=self.b(mlp.c_fc))), mode="TANH_APPROXIMATION"))
        return mb.add(x=x, y=mb.linear(x=h, weight=self.w(mlp.c_proj, f"{name}.mlp.c_proj"), bias=self.b(mlp.c_proj)))

    def layer(self, i, layer, x, S, cos, sin, attend):
        """One Llama block; `attend(i, k, v)` stores k/v in the cache and returns (keys, values, mask)."""
        if self.gpt2:
            return self.gpt2_layer(i, layer, x, S, attend)
        mb, attn, name = self.mb, layer.self_attn, f"tfmr.layers.{i}"
        h = self.rms_norm(x, layer.input_layernorm)
        q = self.heads(mb.linear(x=h, weight=self.w(attn.q_proj, f"{name}.self_attn.q_proj")), S)
        k = self.heads(mb.linear(x=h, weight=self.w(attn.k_proj, f"{name}.self_attn.k_proj")), S)
        v = self.heads(mb.linear(x=h, weight=self.w(attn.v_proj, f"{name}.self_attn.v_proj")), S)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        keys, values, mask = attend(i, k, v)
        o = mb.scaled_dot_product_attention(query=q, key=keys, value=values, attn_mask=mask)
        o = mb.reshape(x=mb.transpose(x=o, perm=[0, 2, 1, 3]), shape=[self.B, S, self.n_heads * self.head_dim])
        x = mb.add(x=x, y=mb.linear(x=o, weight=self.w(attn.o_proj, f"{name}.self_attn.o_proj")))
        h = self.rms_norm(x, layer.post_attention_layernorm)
        mlp = layer.mlp
        gate = mb.linear(x=h, weight=self.w(mlp.gate_proj, f"{name}.mlp.gate_proj"))
        up = mb.linear(x=h, weight=self.w(mlp.up_proj, f"{name}.mlp.up_proj"))
        down = mb.linear(x=mb.mul(x=mb.silu(x=gate), y=up), weight=self.w(mlp.down_proj, f"{name}.mlp.down_proj"))
        return mb.add(x=x, y=down)

    def backbone(self, x, S, cos, sin, attend):
        for i, layer in enumerate(self.t3.tfmr.layers):
            x = self.layer(i, layer, x, S, cos, sin, attend)
        return x

    def logits(self, h_last):
        """(B, 1, D) hidden rows -> (B, V) fp32 logits after the final norm and speech head."""
        mb, head = self.mb, self.t3.speech_head
        h = self.norm(h_last, self.t3.tfmr.ln_f if self.gpt2 else self.t3.tfmr.norm)
        bias = {"bias": self.b(head)} if self.cfg.speech_head_bias else {}
        logits = mb.linear(x=h, weight=self.w(head, "speech_head"), **bias)
        return mb.cast(x=mb.squeeze(x=logits, axes=[1]), dtype="fp32", name="logits")

    def embed(self, module, indices, name, rows=None):
        return self.mb.gather(x=self.w(module, name, rows), indices=indices, axis=0)

    def positions(self, indices):
        """GPT-2's wpe rows at absolute positions (only the context's rows are stored)."""
        return self.embed(self.t3.tfmr.wpe, indices, "tfmr.wpe", rows=self.context)


def batch_size(cfg) -> int:
    """2 for the Llama T3 (conditioned + unconditioned CFG rows); 1 for GPT-2, which runs without CFG."""
    return 1 if cfg.is_gpt2 else 2


def head_dim(cfg) -> int:
    return cfg.hidden_size // cfg.num_attention_heads if cfg.is_gpt2 else cfg.head_dim


def default_cond_slot(cfg) -> int:
    """Conditioning rows a prefill holds: fixed for Llama; GPT-2's speaker row + its longest prompt."""
    return 1 + cfg.speech_cond_prompt_len if cfg.is_gpt2 else cfg.cond_len


def n_bos(cfg) -> int:
    return 2 if cfg.repeat_bos else 1


def _state_specs(mb, types, cfg, context):
    shape = (batch_size(cfg), cfg.num_attention_heads, context, head_dim(cfg))  # (rows, H, context, Dh)
    return [mb.StateTensorSpec(shape, dtype=types.fp16) for _ in range(2 * cfg.num_hidden_layers)]


def state_names(num_layers: int) -> List[str]:
    return [n for i in range(num_layers) for n in (f"k_cache_{i}", f"v_cache_{i}")]


def _program(t3, context: int, kind: str, text_slot: int = 0, cond_slot: int = 0):
    """One pymil Program: `decode` or a prefill for `text_slot` text tokens."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    cfg = t3.cfg
    D, C = cfg.hidden_size, cond_slot
    if not cfg.is_gpt2 and cfg.num_key_value_heads != cfg.num_attention_heads:
        raise T3ExportError("grouped-query attention is not supported by the T3 export (T3 uses H == KV heads)")
    names = state_names(cfg.num_hidden_layers)
    states = _state_specs(mb, types, cfg, context)
    if kind == FUNCTION_DECODE:
        arg_names = decode_inputs(cfg)
        inputs = [mb.TensorSpec((1,), dtype=types.int32) for _ in arg_names]
    else:
        inputs = [mb.TensorSpec((1, C, D), dtype=types.fp16), mb.TensorSpec((1, text_slot), dtype=types.int32),
                  mb.TensorSpec((1,), dtype=types.int32)]
        arg_names = ["cond", "text_ids", "text_len"]
        if cfg.is_gpt2:
            inputs.append(mb.TensorSpec((1,), dtype=types.int32))
            arg_names.append("cond_len")
    specs = dict(zip(arg_names + names, inputs + states))
    # Built as a Function directly: mb.program takes input names from a Python signature.
    with Function(specs, opset_version=ct.target.iOS18) as func:
        a = {name: func.inputs[name] for name in specs}
        g = _Graph(mb, t3, context)
        if kind == FUNCTION_DECODE:
            out = _decode_body(mb, g, t3, a, context)
        elif cfg.is_gpt2:
            out = _gpt2_prefill_body(mb, g, t3, a, text_slot, cond_slot)
        else:
            out = _prefill_body(mb, g, t3, a, text_slot)
        func.set_outputs([out])
    prog = Program()
    prog.add_function("main", func)
    return prog


def decode_inputs(cfg) -> List[str]:
    """GPT-2 has no T3 speech positions: its wpe row is the KV position itself."""
    return ["token", "position"] + (["speech_position"] if cfg.learned_input_pos else [])


def _decode_body(mb, g, t3, a, context):
    cfg = t3.cfg
    H, Dh, B = cfg.num_attention_heads, g.head_dim, g.B
    e = g.embed(t3.speech_emb, a["token"], "speech_emb")  # (1, D)
    if cfg.learned_input_pos:
        e = mb.add(x=e, y=g.embed(t3.speech_pos_emb.emb, a["speech_position"], "speech_pos_emb.emb"))
    if g.gpt2:
        e = mb.add(x=e, y=g.positions(a["position"]))
    x = mb.tile(x=mb.expand_dims(x=e, axes=[0]), reps=[B, 1, 1])  # every CFG row gets the token
    cos = sin = None
    if not g.gpt2:
        cos = mb.gather(x=g.cos, indices=a["position"], axis=0)  # (1, Dh)
        sin = mb.gather(x=g.sin, indices=a["position"], axis=0)
    begin = mb.concat(values=[np.zeros(2, np.int32), a["position"], np.zeros(1, np.int32)], axis=0)
    end = mb.add(x=begin, y=np.array([B, H, 1, Dh], np.int32))
    mask = mb.less_equal(x=np.arange(context, dtype=np.int32), y=a["position"])  # (ctx,)
    mask = mb.expand_dims(x=mask, axes=[0])  # (1, ctx)

    def attend(i, k, v):
        out = []
        for value, state in ((k, a[f"k_cache_{i}"]), (v, a[f"v_cache_{i}"])):
            full = mb.slice_update(x=mb.read_state(input=state), update=value, begin=begin, end=end)
            mb.coreml_update_state(state=state, value=full)
            out.append(full)
        return out[0], out[1], mask

    return g.logits(g.backbone(x, 1, cos, sin, attend))


def _prefill_attend(mb, a, shape):
    """Prefill attention hook: writes the chunk's K/V at the start of each cache; a causal mask."""
    causal = np.tril(np.ones((shape[2], shape[2]), bool))

    def attend(i, k, v):
        for value, state in ((k, a[f"k_cache_{i}"]), (v, a[f"v_cache_{i}"])):
            full = mb.slice_update(x=mb.read_state(input=state), update=value,
                                   begin=np.zeros(4, np.int32), end=np.array(shape, np.int32))
            mb.coreml_update_state(state=state, value=full)
        return k, v, causal

    return attend


def _prefill_body(mb, g, t3, a, T):
    cfg = t3.cfg
    C = cfg.cond_len
    P = C + T + 2
    H, Dh = cfg.num_attention_heads, cfg.head_dim
    D = cfg.hidden_size
    text = g.embed(t3.text_emb, mb.squeeze(x=a["text_ids"], axes=[0]), "text_emb")  # (T, D)
    pos = g.embed(t3.text_pos_emb.emb, np.arange(T, dtype=np.int32), "text_pos_emb.emb")
    bos = mb.add(x=g.embed(t3.speech_emb, np.array([cfg.start_speech_token], np.int32), "speech_emb"),
                 y=g.embed(t3.speech_pos_emb.emb, np.array([0], np.int32), "speech_pos_emb.emb"))  # (1, D)
    cond = mb.squeeze(x=a["cond"], axes=[0])
    pad = np.zeros((2, D), np.float16)
    rows = np.arange(P, dtype=np.int32).reshape(P, 1)
    start = mb.add(x=a["text_len"], y=np.int32(C))
    is_bos = mb.logical_and(x=mb.greater_equal(x=rows, y=start),
                            y=mb.less(x=rows, y=mb.add(x=start, y=np.int32(2))))  # (P, 1)
    seqs = []
    for text_part in (mb.add(x=text, y=pos), pos):  # the uncond row keeps positions only (text zeroed)
        seq = mb.concat(values=[cond, text_part, pad], axis=0)
        seqs.append(mb.select(cond=is_bos, a=mb.tile(x=bos, reps=[P, 1]), b=seq))
    x = mb.stack(values=seqs, axis=0)  # (2, P, D)
    cos, sin = g.cos[:P], g.sin[:P]
    h = g.backbone(x, P, cos, sin, _prefill_attend(mb, a, (2, H, P, Dh)))
    last = mb.add(x=start, y=np.int32(1))  # the second BOS
    return g.logits(mb.gather(x=h, indices=last, axis=1))  # (2, 1, D)


def _gpt2_prefill_body(mb, g, t3, a, T, C):
    """[cond (cond_len) | text (text_len) | BOS x n | padding] gathered row by row from one table, + wpe[row]."""
    cfg = t3.cfg
    nb = n_bos(cfg)
    P, D = C + T + nb, cfg.hidden_size
    H, Dh = cfg.num_attention_heads, g.head_dim
    text = g.embed(t3.text_emb, mb.squeeze(x=a["text_ids"], axes=[0]), "text_emb")  # (T, D)
    if cfg.learned_input_pos:
        text = mb.add(x=text, y=g.embed(t3.text_pos_emb.emb, np.arange(T, dtype=np.int32), "text_pos_emb.emb"))
    bos = g.embed(t3.speech_emb, np.array([cfg.start_speech_token], np.int32), "speech_emb")  # (1, D)
    if cfg.learned_input_pos:
        bos = mb.add(x=bos, y=g.embed(t3.speech_pos_emb.emb, np.array([0], np.int32), "speech_pos_emb.emb"))
    table = mb.concat(values=[mb.squeeze(x=a["cond"], axes=[0]), text, bos, np.zeros((1, D), np.float16)], axis=0)
    rows = np.arange(P, dtype=np.int32)
    text_end = mb.add(x=a["cond_len"], y=a["text_len"])
    bos_end = mb.add(x=text_end, y=np.int32(nb))
    index = mb.select(cond=mb.less(x=rows, y=bos_end), a=np.int32(C + T), b=np.int32(C + T + 1))
    index = mb.select(cond=mb.less(x=rows, y=text_end), a=mb.sub(x=mb.add(x=rows, y=np.int32(C)), y=a["cond_len"]),
                      b=index)
    index = mb.select(cond=mb.less(x=rows, y=a["cond_len"]), a=rows, b=index)
    x = mb.add(x=mb.gather(x=table, indices=index, axis=0), y=g.positions(rows))  # (P, D)
    x = mb.expand_dims(x=x, axes=[0])  # (1, P, D)
    h = g.backbone(x, P, None, None, _prefill_attend(mb, a, (1, H, P, Dh)))
    last = mb.sub(x=bos_end, y=np.int32(1))  # the (last) BOS
    return g.logits(mb.gather(x=h, indices=last, axis=1))  # (1, 1, D)


def build_t3_package(t3, out_path, context: int, text_slots: Sequence[int], tmp_dir,
                     cond_slot: Optional[int] = None) -> Dict[str, object]:
    """Writes the multifunction T3 .mlpackage; returns its manifest entry.

    `cond_slot`: conditioning rows of a GPT-2 prefill (default 1 + 375); the Llama T3's is fixed."""
    import coremltools as ct

    cfg = t3.cfg
    C = default_cond_slot(cfg) if cond_slot is None or not cfg.is_gpt2 else int(cond_slot)
    if C < 1:
        raise T3ExportError(f"cond slot {C}: must hold at least the speaker row")
    if cfg.is_gpt2 and context > cfg.max_positions:
        raise T3ExportError(f"context {context} exceeds GPT-2's {cfg.max_positions} positions")
    for T in text_slots:
        if C + T + n_bos(cfg) > context:
            raise T3ExportError(f"text slot {T} leaves no room in a context of {context}; raise --context")
    if context % 32:
        raise T3ExportError(f"context {context} must be a multiple of 32 (Core ML state dims)")
    names = [FUNCTION_DECODE] + [prefill_name(T) for T in text_slots]
    desc = ct.utils.MultiFunctionDescriptor()
    for name, T in zip(names, [0] + list(text_slots)):
        prog = _program(t3, context, FUNCTION_DECODE if name == FUNCTION_DECODE else "prefill", T, C)
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                           compute_precision=ct.precision.FLOAT32, skip_model_load=True)
        path = f"{tmp_dir}/{name}.mlpackage"
        model.save(path)
        desc.add_function(path, src_function_name="main", target_function_name=name)
    desc.default_function_name = FUNCTION_DECODE
    ct.utils.save_multifunction(desc, str(out_path))
    return {"functions": names, "context": context, "text_slots": list(text_slots), "cond_slot": C,
            "batch": batch_size(cfg), "head_dim": head_dim(cfg), "states": state_names(cfg.num_hidden_layers)}
