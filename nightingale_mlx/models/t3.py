"""T3: text tokens + voice conditioning -> speech tokens (a Llama-520M, or for Turbo/Nano a GPT-2,
over custom embeddings).

Attribute names equal the checkpoint's (`tfmr.layers.0.self_attn.q_proj`, `tfmr.h.0.attn.c_attn`,
`cond_enc.perceiver.attn.to_q`), so conversion is a strict name-for-name load. The backbone and
every difference of the Turbo path are T3Config fields (config.py), not a second class.
"""

from typing import Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache
from mlx_lm.models.gpt2 import Attention as GPT2Attention
from mlx_lm.models.gpt2 import MLP as GPT2MLP
from mlx_lm.models.gpt2 import GPT2Model
from mlx_lm.models.gpt2 import ModelArgs as GPT2Args
from mlx_lm.models.llama import Attention, LlamaModel, ModelArgs

from ..alignment import AlignmentStreamAnalyzer
from ..config import T3Config
from ..sampling import SamplingParams, apply_cfg, make_sampler, process_logits
from .cpu_kernels import GEMV_MAX_ROWS, attention, gelu_tanh, gelu_tanh_numpy, gemv, numpy_f32, on_cpu, softmax_
from .perceiver import Perceiver


class LearnedPositionEmbeddings(nn.Module):
    def __init__(self, seq_len: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(seq_len, dim)

    def __call__(self, length: int) -> mx.array:
        return self.emb(mx.arange(length))  # (length, D): positions 0..length-1

    def fixed(self, index: int) -> mx.array:
        return self.emb(mx.array([index]))  # (1, D)


class T3CondEnc(nn.Module):
    """Speaker projection | perceiver over the prompt speech | emotion ("exaggeration") token."""

    def __init__(self, cfg: T3Config):
        super().__init__()
        D = cfg.hidden_size
        self.speaker_embed_size = cfg.speaker_embed_size
        self.spkr_enc = nn.Linear(cfg.speaker_embed_size, D)
        if cfg.emotion_adv:
            self.emotion_adv_fc = nn.Linear(1, D, bias=False)
        if cfg.use_perceiver:
            self.perceiver = Perceiver(cfg.perceiver_queries, D, cfg.perceiver_heads)

    def __call__(
        self, speaker_emb: mx.array, prompt_emb: Optional[mx.array], emotion: mx.array
    ) -> mx.array:
        parts = [self.spkr_enc(speaker_emb.reshape(-1, self.speaker_embed_size))[:, None]]
        if prompt_emb is not None:
            parts.append(self.perceiver(prompt_emb) if "perceiver" in self else prompt_emb)
        if "emotion_adv_fc" in self:
            parts.append(self.emotion_adv_fc(emotion.reshape(-1, 1, 1)))
        return mx.concatenate(parts, axis=1)  # (B, 34, D); GPT-2: (B, 1 + prompt, D)


def cached_attention(q: mx.array, k: mx.array, v: mx.array, cache: KVCache, scale: float) -> mx.array:
    """(B, H, L, d) q, k, v -> (B, L, H * d): appends k, v to the cache, attends causally over it in
    numpy (cpu_kernels.attention): MLX's CPU softmax made it ~15% of a Llama decode step, and ~20% of
    a GPT-2 prefill."""
    B, _, L, _ = q.shape
    k, v = cache.update_and_fetch(k, v)
    out = attention(q, k, v, scale, causal=True)
    return out.transpose(0, 2, 1, 3).reshape(B, L, -1)


class CpuAttention(Attention):
    """mlx-lm's Llama attention; on the CPU, over a KV cache, its softmax runs in numpy."""

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[KVCache] = None) -> mx.array:
        if not on_cpu() or cache is None or self.n_kv_heads != self.n_heads:
            return super().__call__(x, mask, cache)
        B, L, _ = x.shape
        q, k, v = (p(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.rope(q, offset=cache.offset), self.rope(k, offset=cache.offset)
        return self.o_proj(cached_attention(q, k, v, cache, self.scale))


class GPT2CpuAttention(GPT2Attention):
    """mlx-lm's GPT-2 attention (fused c_attn); on the CPU, over a KV cache, its softmax runs in numpy."""

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[KVCache] = None) -> mx.array:
        if not on_cpu() or cache is None:
            return super().__call__(x, mask, cache)
        B, L, _ = x.shape
        q, k, v = (t.reshape(B, L, self.n_head, -1).transpose(0, 2, 1, 3)
                   for t in mx.split(self.c_attn(x), 3, axis=-1))
        return self.c_proj(cached_attention(q, k, v, cache, self.scale))


class GPT2CpuMLP(GPT2MLP):
    """mlx-lm's GPT-2 feed-forward with cpu_kernels' tanh GELU (numpy's on the CPU)."""

    def __call__(self, x: mx.array) -> mx.array:
        return self.c_proj(gelu_tanh(self.c_fc(x)))


class Backbone(LlamaModel):
    """mlx-lm's Llama stack without its token embedding: T3 always feeds input embeddings."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        del self.embed_tokens
        for layer in self.layers:
            layer.self_attn.__class__ = CpuAttention  # same parameters, one overridden __call__

    def numpy_step_fits(self, embeds: mx.array) -> bool:
        """A decode step (1 position, 1 row or the CFG pair) of the fp32 stack on the CPU."""
        attn = self.layers[0].self_attn
        return (embeds.shape[1] == 1 and embeds.shape[0] <= GEMV_MAX_ROWS and on_cpu()
                and attn.q_proj.weight.dtype == mx.float32 and attn.n_kv_heads == attn.n_heads
                and _inverse_frequencies(attn.rope) is not None)

    def numpy_step(self, embeds: mx.array, cache: Sequence[KVCache]) -> mx.array:
        """One decode step in numpy, (B, 1, D) embeddings -> (B, 1, D) normed hidden: as
        GPT2Backbone.numpy_step, no MLX evaluation between the products (a CFG step of mlx-lm's
        blocks ran ~10 per layer). The same arithmetic as the blocks (tested equal)."""
        h = numpy_f32(embeds)[:, 0]  # (B, D)
        B = h.shape[0]
        cos, sin = _rope_table(self.layers[0].self_attn.rope, cache[0].offset)  # one RoPE for every layer
        for layer, c in zip(self.layers, cache):
            attn = layer.self_attn
            x = _rms_norm(h, layer.input_layernorm)
            q, k, v = (_linear(x, p).reshape(B, attn.n_heads, -1) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            h = h + _linear(_step_attention(c, _rope(q, cos, sin), _rope(k, cos, sin), v, attn.scale), attn.o_proj)
            x = _rms_norm(h, layer.post_attention_layernorm)
            gate, up = _linear(x, layer.mlp.gate_proj), _linear(x, layer.mlp.up_proj)
            h = h + _linear(gate / (1.0 + np.exp(-gate)) * up, layer.mlp.down_proj)  # silu(gate) * up
        return mx.array(_rms_norm(h, self.norm)[:, None])


class GPT2Backbone(GPT2Model):
    """mlx-lm's GPT-2 stack without its token embedding (the reference deletes `tfmr.wte`): input
    embeddings + wpe at the cache's offset, pre-LN blocks (tanh GELU), final ln_f."""

    def __init__(self, args: GPT2Args):
        super().__init__(args)
        del self.wte
        for layer in self.h:
            layer.attn.__class__ = GPT2CpuAttention  # same parameters, one overridden __call__
            layer.mlp.__class__ = GPT2CpuMLP

    @property
    def layers(self):
        return self.h

    def __call__(self, embeds: mx.array, cache: Sequence[KVCache]) -> mx.array:
        offset = cache[0].offset
        h = embeds + self.wpe(mx.arange(offset, offset + embeds.shape[1])).astype(embeds.dtype)
        mask = create_attention_mask(h, cache[0])
        for layer, c in zip(self.h, cache):
            h = layer(h, mask, cache=c)
        return self.ln_f(h)

    def numpy_step_fits(self, embeds: mx.array) -> bool:
        """A decode step (1 position, batch 1) of the fp32 stack on the CPU."""
        return embeds.shape[:2] == (1, 1) and on_cpu() and self.h[0].attn.c_attn.weight.dtype == mx.float32

    def numpy_step(self, embeds: mx.array, cache: Sequence[KVCache]) -> mx.array:
        """One decode step of the fp32 stack in numpy, (1, 1, D) embedding -> (1, 1, D) normed hidden.
        On the CPU a step of MLX ops between the numpy products spent ~30% of its time in MLX
        evaluations (~190 per step); this has none. The same arithmetic as the blocks (tested equal)."""
        h = numpy_f32(embeds).reshape(-1) + numpy_f32(self.wpe.weight)[cache[0].offset]
        for layer, c in zip(self.h, cache):
            attn = layer.attn
            q, k, v = np.split(_linear(_layer_norm(h, layer.ln_1), attn.c_attn).reshape(3, attn.n_head, -1), 3)
            h = h + _linear(_step_attention(c, q, k, v, attn.scale)[0], attn.c_proj)
            h = h + _linear(gelu_tanh_numpy(_linear(_layer_norm(h, layer.ln_2), layer.mlp.c_fc)), layer.mlp.c_proj)
        return mx.array(_layer_norm(h, self.ln_f)).reshape(embeds.shape)


def _layer_norm(x: np.ndarray, ln: nn.LayerNorm) -> np.ndarray:
    mean = x.mean()
    centred = x - mean
    return centred / np.sqrt(np.mean(centred * centred) + np.float32(ln.eps)) * numpy_f32(ln.weight) + numpy_f32(ln.bias)


def _rms_norm(x: np.ndarray, norm: nn.RMSNorm) -> np.ndarray:
    """mx.fast.rms_norm over the last axis of (R, D) fp32 rows."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(norm.eps)) * numpy_f32(norm.weight)


def _linear(x: np.ndarray, layer: nn.Linear) -> np.ndarray:
    """layer(x) for one (D,) row or a few (R, D) rows."""
    y = gemv(x.reshape(-1, x.shape[-1]), numpy_f32(layer.weight)).reshape(*x.shape[:-1], -1)
    return y + numpy_f32(layer.bias) if "bias" in layer else y


def _inverse_frequencies(rope) -> Optional[np.ndarray]:
    """The (dims/2,) angular frequencies of mlx-lm's Llama3RoPE or nn.RoPE (not traditional, whole
    head); None for other variants, which keep MLX's kernel."""
    if getattr(rope, "traditional", True):
        return None
    half = np.arange(0, rope.dims, 2, dtype=np.float64) / rope.dims
    if isinstance(rope, nn.RoPE):
        return getattr(rope, "scale", 1.0) * rope.base ** -half
    if type(rope).__name__ == "Llama3RoPE":
        return 1.0 / np.asarray(rope._freqs, np.float64)
    return None


def _rope_table(rope, position: int) -> Tuple[np.ndarray, np.ndarray]:
    angles = position * _inverse_frequencies(rope)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotates (..., d) rows at one position, halves paired as mx.fast.rope(traditional=False)."""
    n = cos.shape[0]
    a, b = x[..., :n], x[..., n:2 * n]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos, x[..., 2 * n:]], axis=-1)


def _step_attention(cache: KVCache, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """One decode step's attention: appends the (B, H, d) key/value row, attends the (B, H, d)
    queries over the cache; (B, H * d)."""
    keys, values = _append_row(cache, k, v)
    scores = (keys @ (q * np.float32(scale))[..., None])[..., 0]  # (B, H, S)
    softmax_(scores)
    return (scores[:, :, None] @ values).reshape(q.shape[0], -1)


def _append_row(cache: KVCache, k: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Appends one (B, H, d) row to an fp32 KVCache; returns its (B, H, S, d) keys and values so far.
    Rows are written into the cache's buffers through zero-copy views; MLX grows them when full."""
    if cache.keys is None or cache.offset >= cache.keys.shape[2]:
        cache.update_and_fetch(mx.array(k[:, :, None]), mx.array(v[:, :, None]))
    else:
        numpy_f32(cache.keys)[:, :, cache.offset] = k
        numpy_f32(cache.values)[:, :, cache.offset] = v
        cache.offset += 1
    return numpy_f32(cache.keys)[:, :, : cache.offset], numpy_f32(cache.values)[:, :, : cache.offset]


class T3(nn.Module):
    def __init__(self, cfg: T3Config):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        if cfg.is_gpt2:
            self.tfmr = GPT2Backbone(GPT2Args.from_dict(cfg.gpt2_args()))
        else:
            self.tfmr = Backbone(ModelArgs.from_dict(cfg.llama_args()))
        self.cond_enc = T3CondEnc(cfg)
        self.text_emb = nn.Embedding(cfg.text_vocab_size, D)
        self.speech_emb = nn.Embedding(cfg.speech_vocab_size, D)
        if cfg.learned_input_pos:
            self.text_pos_emb = LearnedPositionEmbeddings(cfg.max_text_tokens + 2, D)
            self.speech_pos_emb = LearnedPositionEmbeddings(cfg.max_speech_tokens + 4, D)
        self.speech_head = nn.Linear(D, cfg.speech_vocab_size, bias=cfg.speech_head_bias)

    def make_cache(self) -> List[KVCache]:
        return [KVCache() for _ in self.tfmr.layers]

    @property
    def compute_dtype(self):
        """The model's activation dtype (voices are fp32; norms stay float in every recipe)."""
        return (self.tfmr.ln_f if self.cfg.is_gpt2 else self.tfmr.norm).weight.dtype

    def _pos(self, table: str, index: int) -> mx.array:
        """Learned position `index` of T3's own table, or 0 where the backbone adds positions (GPT-2)."""
        return getattr(self, table).fixed(index) if self.cfg.learned_input_pos else 0

    # --- embeddings -------------------------------------------------------------------------

    def condition(
        self, speaker_emb: mx.array, prompt_tokens: Optional[mx.array], exaggeration: float
    ) -> mx.array:
        """Conditioning tokens (1, 34, D) from a voice; cacheable per voice and exaggeration."""
        dtype = self.compute_dtype
        prompt_emb = None
        if prompt_tokens is not None and prompt_tokens.size > 0:
            prompt_tokens = prompt_tokens.reshape(1, -1)
            prompt_emb = self.speech_emb(prompt_tokens)
            if self.cfg.learned_input_pos:
                prompt_emb = prompt_emb + self.speech_pos_emb(prompt_tokens.shape[1])
        emotion = mx.full((1, 1, 1), exaggeration, dtype=dtype)
        return self.cond_enc(speaker_emb.astype(dtype), prompt_emb, emotion)

    def prefill_embeddings(self, cond: mx.array, text_tokens: mx.array, cfg: bool) -> mx.array:
        """[cond | text+pos | BOS | BOS] for the cond row and, with CFG, an uncond row (text zeroed).

        `text_tokens` already carries SOT/EOT. The double BOS is the reference's quirk: one from
        `prepare_input_embeds`, one more from `inference`.
        """
        L = text_tokens.shape[-1]
        text = self.text_emb(text_tokens.reshape(1, L))
        if cfg:
            text = mx.concatenate([text, mx.zeros_like(text)], axis=0)  # uncond keeps positions only
        if self.cfg.learned_input_pos:
            text = text + self.text_pos_emb(L)
        B = text.shape[0]
        bos = self.speech_emb(mx.array([[self.cfg.start_speech_token]])) + self._pos("speech_pos_emb", 0)
        bos = mx.broadcast_to(bos, (B, 1, bos.shape[-1]))
        cond = mx.broadcast_to(cond, (B, *cond.shape[1:]))
        return mx.concatenate([cond, text] + [bos] * (2 if self.cfg.repeat_bos else 1), axis=1)

    def speech_embedding(self, token: mx.array, step: int, batch: int) -> mx.array:
        """Embedding of the token sampled at `step` (0-based): speech_emb + speech_pos[step + 1]."""
        e = self.speech_emb(token.reshape(1, 1)) + self._pos("speech_pos_emb", step + 1)
        return mx.broadcast_to(e, (batch, 1, e.shape[-1]))

    # --- backbone ---------------------------------------------------------------------------

    def __call__(
        self,
        embeds: mx.array,
        cache: Sequence[KVCache],
        align_from: Optional[int] = None,
    ) -> Tuple[mx.array, Optional[mx.array]]:
        """Runs the backbone; returns (normed hidden (B, L, D), alignment attention or None).

        With `align_from`, also returns the mean attention of the analyzer's heads, CFG row 0,
        for query rows `align_from:` of this chunk over all keys: (rows, keys).
        """
        if align_from is None and self.tfmr.numpy_step_fits(embeds):
            return self.tfmr.numpy_step(embeds, cache), None
        if self.cfg.is_gpt2:
            return self.tfmr(embeds, cache), None  # no analyzer on the Turbo path
        h = embeds
        mask = create_attention_mask(h, cache[0])
        heads = {}
        if align_from is not None:
            for layer, head in self.cfg.alignment_heads:
                heads.setdefault(layer, []).append(head)
        probs = []
        for idx, (layer, c) in enumerate(zip(self.tfmr.layers, cache)):
            if idx in heads:
                x = layer.input_layernorm(h[:1, align_from:])
                h = layer(h, mask, c)
                probs.append(self._head_attention(layer.self_attn, x, c, heads[idx], h.shape[1] - align_from))
            else:
                h = layer(h, mask, c)
        align = mx.concatenate(probs, axis=0).mean(axis=0) if probs else None
        return self.tfmr.norm(h), align

    @staticmethod
    def _head_attention(attn, x: mx.array, cache: KVCache, heads: List[int], rows: int) -> mx.array:
        """Softmax attention of selected heads for the last `rows` queries, from the filled cache.

        Recomputing q for three layers costs far less than materialising every attention map.
        """
        q = attn.q_proj(x)
        q = q.reshape(1, rows, attn.n_heads, -1).transpose(0, 2, 1, 3)[:, heads]  # (1, h, rows, d)
        start = cache.offset - rows
        q = attn.rope(q, offset=start)
        kv_head = [hd * attn.n_kv_heads // attn.n_heads for hd in heads]
        k = cache.keys[:1, kv_head, : cache.offset, :]  # (1, h, S, d)
        scores = (q.astype(mx.float32) @ k.astype(mx.float32).swapaxes(-1, -2)) * attn.scale
        qpos = mx.arange(start, cache.offset)[:, None]
        scores = mx.where(mx.arange(cache.offset)[None] <= qpos, scores, -mx.inf)
        return mx.softmax(scores, axis=-1)[0]  # (h, rows, S)

    def logits(self, hidden: mx.array) -> mx.array:
        return self.speech_head(hidden[:, -1]).astype(mx.float32)  # (B, V)

    # --- generation -------------------------------------------------------------------------

    def inference(
        self,
        cond: mx.array,
        text_tokens: mx.array,
        params: SamplingParams,
        *,
        key: Optional[mx.array] = None,
        sampler=None,
        alignment_analyzer: bool = False,
        prefix: Optional[dict] = None,
    ) -> Iterator[int]:
        """Yields speech tokens until EOS (not yielded) or `params.max_new_tokens`.

        Per step, in the reference's order: CFG combine, alignment analyzer (optional), then
        `params.order`'s processors (sampling.process_logits), sample. `sampler(logits) -> (1,) token`
        overrides the random sampler (parity tests inject one). `prefix`: a dict the caller keeps
        for this `cond` (TTS: per voice and exaggeration); the backbone's keys and values over the
        conditioning rows are stored in it on first use, and later prefills run the text rows only.
        """
        cfg = self.cfg
        use_cfg = params.cfg_weight > 0
        batch = 2 if use_cfg else 1
        embeds = self.prefill_embeddings(cond, text_tokens, use_cfg)
        text_start = cond.shape[1]
        text_end = text_start + text_tokens.shape[-1]
        analyzer = None
        if alignment_analyzer:
            analyzer = AlignmentStreamAnalyzer(text_start, text_end, cfg.stop_speech_token)
        sampler = sampler or make_sampler(params.temperature, key)
        V = cfg.speech_vocab_size
        vocab = mx.arange(V)
        seen = vocab == cfg.start_speech_token  # repetition penalty covers BOS too
        cache = self.make_cache()
        stored = prefix.get(batch) if prefix is not None else None
        start = 0
        if stored is not None:  # the conditioning rows' keys and values, from an earlier call
            for c, (k, v) in zip(cache, stored):
                c.update_and_fetch(k, v)
            start = text_start
        hidden, align = self(embeds[:, start:], cache, text_end - start if analyzer else None)
        if prefix is not None and stored is None:
            # Causal and absolute positions: the first rows of a full prefill are the prefix's. Copies
            # (contiguous), so the cache buffers keep being updated in place.
            prefix[batch] = [(mx.contiguous(c.keys[..., :text_start, :]), mx.contiguous(c.values[..., :text_start, :]))
                             for c in cache]
            mx.eval(prefix[batch])
        last = cfg.start_speech_token
        for step in range(params.max_new_tokens):
            logits = self.logits(hidden)
            if use_cfg:
                logits = apply_cfg(logits, params.cfg_weight)
            if analyzer is not None:
                logits = analyzer.step(logits, np.array(align), last)
            logits = process_logits(logits, seen, params)
            token = sampler(logits)
            # inference_turbo's history is the generated tokens; BOS counts at the first step only.
            first_turbo_step = step == 0 and not cfg.bos_always_penalised
            seen = (vocab == token) if first_turbo_step else seen | (vocab == token)
            hidden, align = self(
                self.speech_embedding(token, step, batch), cache, 0 if analyzer else None
            )
            # Queue the next forward before syncing on the token: Python overlaps with compute.
            mx.async_eval(hidden, seen, *([align] if analyzer else []))
            last = token.item()
            if last == cfg.stop_speech_token and (step > 0 or cfg.prefill_token_stops):
                return
            yield last
