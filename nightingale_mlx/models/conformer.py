"""UpsampleConformerEncoder: S3Gen's token encoder (CosyVoice 2 / ESPnet conformer), channels-last.

Tokens (B, N, C) -> pre-lookahead conv -> conformer blocks -> x2 nearest upsample + causal conv ->
conformer blocks -> (B, 2N, C). Attention is full (bidirectional) with ESPnet relative positions;
inference runs one unpadded sequence, so there are no padding masks.
"""

import math
from typing import List

import mlx.core as mx
import mlx.nn as nn

from ..config import FlowConfig
from .cpu_kernels import attention

EMBED_NORM_EPS = 1e-5  # LinearNoSubsampling and after_norm
LAYER_NORM_EPS = 1e-12  # ConformerEncoderLayer's norm_mha / norm_ff
LOOKAHEAD_SLOPE = 0.01  # F.leaky_relu default in PreLookaheadLayer


class Placeholder(nn.Module):
    """A parameter-free slot (dropout, activation) that keeps torch Sequential indices aligned."""

    def __call__(self, x: mx.array) -> mx.array:
        return x


def rel_positions(length: int, dim: int) -> mx.array:
    """ESPnet's relative position table for `length` frames: (1, 2*length - 1, dim).

    Row k encodes the relative position (length - 1 - k), sin at even and cos at odd dims; this
    equals the reference's slice of flip(pe_pos) | pe_neg[1:] for any length.
    """
    pos = mx.arange(length - 1, -length, -1, dtype=mx.float32)[:, None]
    div = mx.exp(mx.arange(0, dim, 2, dtype=mx.float32) * -(math.log(10000.0) / dim))
    angle = pos * div  # (2L-1, dim/2)
    return mx.stack([mx.sin(angle), mx.cos(angle)], axis=-1).reshape(1, 2 * length - 1, dim)


def rel_shift(x: mx.array) -> mx.array:
    """(B, H, T, 2T-1) scores against relative positions -> (B, H, T, T) against key positions.

    The reference's pad/reshape trick, statement for statement: out[..., i, j] = x[..., i, T-1-i+j].
    """
    b, h, t, p = x.shape
    x = mx.pad(x, [(0, 0), (0, 0), (0, 0), (1, 0)])
    x = x.reshape(b, h, p + 1, t)[:, :, 1:]  # (B, H, 2T-1, T)
    return x.reshape(b, h, t, p)[..., : p // 2 + 1]


class LinearNoSubsampling(nn.Module):
    """Linear -> LayerNorm -> (dropout), then the x sqrt(d) scale of EspnetRelPositionalEncoding."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = [nn.Linear(idim, odim), nn.LayerNorm(odim, eps=EMBED_NORM_EPS), Placeholder()]
        self.xscale = math.sqrt(odim)
        self.dim = odim

    def __call__(self, x: mx.array):
        for layer in self.out:
            x = layer(x)
        return x * self.xscale, rel_positions(x.shape[1], self.dim)


class RelPositionMultiHeadedAttention(nn.Module):
    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = mx.zeros((n_head, self.d_k))
        self.pos_bias_v = mx.zeros((n_head, self.d_k))

    def __call__(self, x: mx.array, pos_emb: mx.array) -> mx.array:
        B, T, _ = x.shape
        heads = lambda y: y.reshape(y.shape[0], y.shape[1], self.h, self.d_k)  # noqa: E731
        q = heads(self.linear_q(x))  # (B, T, H, dk)
        k = heads(self.linear_k(x)).transpose(0, 2, 1, 3)
        v = heads(self.linear_v(x)).transpose(0, 2, 1, 3)
        p = heads(self.linear_pos(pos_emb)).transpose(0, 2, 3, 1)  # (1, H, dk, 2T-1)
        q_u = (q + self.pos_bias_u).transpose(0, 2, 1, 3)  # (B, H, T, dk)
        q_v = (q + self.pos_bias_v).transpose(0, 2, 1, 3)
        scale = 1.0 / math.sqrt(self.d_k)
        # The position term (matrix bd) enters the attention as an additive score bias.
        bd = rel_shift(q_v @ p) * scale  # (B, H, T, T)
        # The fp32 position table makes bd fp32; an fp16/quantized flow needs the bias in its dtype.
        out = attention(q_u, k, v, scale, bias=bd.astype(q_u.dtype))
        return self.linear_out(out.transpose(0, 2, 1, 3).reshape(B, T, self.h * self.d_k))


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.w_2 = nn.Linear(hidden, idim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w_2(nn.silu(self.w_1(x)))


class ConformerEncoderLayer(nn.Module):
    """Pre-norm block without macaron FFN or conv module: x += MHA(norm(x)); x += FFN(norm(x))."""

    def __init__(self, size: int, heads: int, linear_units: int):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, size)
        self.feed_forward = PositionwiseFeedForward(size, linear_units)
        self.norm_ff = nn.LayerNorm(size, eps=LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(size, eps=LAYER_NORM_EPS)

    def __call__(self, x: mx.array, pos_emb: mx.array) -> mx.array:
        x = x + self.self_attn(self.norm_mha(x), pos_emb)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookaheadLayer(nn.Module):
    """Each token sees `lookahead` future tokens: right-pad -> conv -> leaky ReLU -> causal conv."""

    def __init__(self, channels: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.pad(x, [(0, 0), (0, self.lookahead), (0, 0)])
        y = nn.leaky_relu(self.conv1(y), LOOKAHEAD_SLOPE)
        y = self.conv2(mx.pad(y, [(0, 0), (2, 0), (0, 0)]))
        return y + x


class Upsample1D(nn.Module):
    """Nearest x stride along time, then a causal conv of kernel 2*stride + 1."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, kernel_size=2 * stride + 1)

    def __call__(self, x: mx.array) -> mx.array:
        x = mx.repeat(x, self.stride, axis=1)
        return self.conv(mx.pad(x, [(0, 0), (2 * self.stride, 0), (0, 0)]))


class UpsampleConformerEncoder(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        C = cfg.encoder_size

        def blocks(n: int) -> List[ConformerEncoderLayer]:
            return [ConformerEncoderLayer(C, cfg.encoder_heads, cfg.encoder_linear_units) for _ in range(n)]

        self.embed = LinearNoSubsampling(cfg.input_size, C)
        self.pre_lookahead_layer = PreLookaheadLayer(C, cfg.pre_lookahead_len)
        self.encoders = blocks(cfg.encoder_blocks)
        self.up_layer = Upsample1D(C, cfg.token_mel_ratio)
        self.up_embed = LinearNoSubsampling(C, C)
        self.up_encoders = blocks(cfg.encoder_up_blocks)
        self.after_norm = nn.LayerNorm(C, eps=EMBED_NORM_EPS)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, N, input_size) token embeddings -> (B, ratio * N, encoder_size)."""
        x, pos = self.embed(x)
        x = self.pre_lookahead_layer(x)
        for layer in self.encoders:
            x = layer(x, pos)
        x, pos = self.up_embed(self.up_layer(x))
        for layer in self.up_encoders:
            x = layer(x, pos)
        return self.after_norm(x)
