"""ConditionalDecoder: the CFM velocity estimator (a 1-D U-Net of causal conv ResBlocks and
transformer blocks), channels-last.

Inference runs unpadded sequences, so the reference's masks are all ones and are left out;
attention is full over all frames, convs are causal.
"""

import math
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import FlowConfig
from .conformer import Placeholder
from .cpu_kernels import attention, exp, gelu

TIME_SCALE = 1000.0  # SinusoidalPosEmb.forward(scale=1000): t in [0, 1] spans 1000 "steps"
NORM_EPS = 1e-5  # torch LayerNorm default (block norms, transformer norm1 / norm3)
FF_MULT = 4


def timestep_embedding(t: mx.array, dim: int) -> mx.array:
    """SinusoidalPosEmb: (B,) -> (B, dim) as [sin | cos] of 1000 t exp(-ln(1e4) k / (dim/2 - 1))."""
    half = dim // 2
    freqs = mx.exp(mx.arange(half, dtype=mx.float32) * -(math.log(10000) / (half - 1)))
    emb = TIME_SCALE * t[:, None] * freqs[None]
    return mx.concatenate([mx.sin(emb), mx.cos(emb)], axis=-1)


class CausalConv1d(nn.Conv1d):
    """Conv1d with kernel_size - 1 zeros on the left, so frame t sees only frames <= t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.causal_padding = kernel_size - 1

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(mx.pad(x, [(0, 0), (self.causal_padding, 0), (0, 0)]))


MISH_LINEAR_ABOVE = 20.0  # tanh(softplus(x)) == 1 in fp32 there (and e^2x would overflow later)


def mish(x: mx.array) -> mx.array:
    """x tanh(softplus(x)) with one exp: tanh(log(1 + e)) = e (e + 2) / (e (e + 2) + 2), e = exp(x).

    Same values as torch's Mish to fp32 rounding, at a third of the transcendental work on CPU.
    Computed in fp32 and returned in x's dtype: in fp16, e (e + 2) overflows above x ~ 5.5.
    """
    dtype, x = x.dtype, x.astype(mx.float32)
    e = exp(mx.minimum(x, MISH_LINEAR_ABOVE))
    n = e * (e + 2)
    return mx.where(x > MISH_LINEAR_ABOVE, x, x * n / (n + 2)).astype(dtype)


class Mish(Placeholder):
    def __call__(self, x: mx.array) -> mx.array:
        return mish(x)


class CausalBlock1D(nn.Module):
    """CausalConv1d -> LayerNorm over channels -> Mish (indices 1 and 3 were torch Transposes)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = [CausalConv1d(dim, dim_out, 3), Placeholder(), nn.LayerNorm(dim_out, eps=NORM_EPS),
                      Placeholder(), Mish()]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.block:
            x = layer(x)
        return x


class CausalResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = [Mish(), nn.Linear(time_emb_dim, dim_out)]
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def __call__(self, x: mx.array, t_emb: mx.array) -> mx.array:
        h = self.block1(x) + self.mlp[1](self.mlp[0](t_emb))[:, None]
        return self.block2(h) + self.res_conv(x)


class Attention(nn.Module):
    """diffusers Attention as configured here: no q/k/v bias, output Linear + (dropout)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.scale = heads, head_dim**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = [nn.Linear(inner, dim), Placeholder()]

    def __call__(self, x: mx.array) -> mx.array:
        B, T, _ = x.shape
        split = lambda y: y.reshape(B, T, self.heads, -1).transpose(0, 2, 1, 3)  # noqa: E731  (B, H, T, dh)
        out = attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)), self.scale)
        return self.to_out[0](out.transpose(0, 2, 1, 3).reshape(B, T, -1))


class GELU(nn.Module):
    """diffusers GELU: Linear then exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def __call__(self, x: mx.array) -> mx.array:
        return gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = [GELU(dim, FF_MULT * dim), Placeholder(), nn.Linear(FF_MULT * dim, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1(x)); x += ff(norm3(x)). The block has no cross-attention (no norm2/attn2)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.ff = FeedForward(dim)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class ConditionalDecoder(nn.Module):
    """Velocity field v(x, t | mu, spks, cond); all sequences (B, T, C)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        channels = list(cfg.decoder_channels)
        if len(channels) != 1:
            # More stages would need the reference's strided Downsample1D / ConvTranspose Upsample1D.
            raise ValueError(f"decoder_channels={channels}: only the single-stage U-Net of S3Gen is supported")
        C, t_dim = channels[0], cfg.time_embed_dim
        self.time_dim = cfg.decoder_in_channels

        def stage(dim_in: int) -> list:
            tfm = [BasicTransformerBlock(C, cfg.decoder_heads, cfg.decoder_head_dim) for _ in range(cfg.decoder_blocks)]
            return [CausalResnetBlock1D(dim_in, C, t_dim), tfm]

        self.time_mlp = TimestepEmbedding(self.time_dim, t_dim)
        if cfg.meanflow:  # intmeanflow: mixes the embeddings of t and of the step's end time r
            self.time_embed_mixer = nn.Linear(2 * t_dim, t_dim, bias=False)
        self.down_blocks = [stage(cfg.decoder_in_channels) + [CausalConv1d(C, C, 3)]]
        self.mid_blocks = [stage(C) for _ in range(cfg.decoder_mid_blocks)]
        self.up_blocks = [stage(2 * C) + [CausalConv1d(C, C, 3)]]
        self.final_block = CausalBlock1D(C, C)
        self.final_proj = nn.Conv1d(C, cfg.output_size, 1)

    def time_embedding(self, t: mx.array, r: Optional[mx.array] = None) -> mx.array:
        """(B,) times -> (B, 4C); the meanflow decoder mixes [emb(t) | emb(r)] (t first)."""
        t_emb = self.time_mlp(timestep_embedding(t, self.time_dim))
        if "time_embed_mixer" not in self:
            return t_emb
        r_emb = self.time_mlp(timestep_embedding(r, self.time_dim))
        return self.time_embed_mixer(mx.concatenate([t_emb, r_emb], axis=-1))

    def __call__(self, x: mx.array, mu: mx.array, t: mx.array, spks: mx.array, cond: mx.array,
                 r: Optional[mx.array] = None) -> mx.array:
        """x, mu, cond: (B, T, 80); t (and the meanflow end time r): (B,); spks: (B, 80) -> velocity (B, T, 80)."""
        t_emb = self.time_embedding(t, r)
        spks = mx.broadcast_to(spks[:, None], x.shape[:2] + spks.shape[-1:])
        x = mx.concatenate([x, mu, spks, cond], axis=-1)  # (B, T, 320)

        def run(stage: list, x: mx.array) -> mx.array:
            x = stage[0](x, t_emb)
            for block in stage[1]:
                x = block(x)
            return x

        skips: List[mx.array] = []
        for down in self.down_blocks:
            x = run(down, x)
            skips.append(x)
            x = down[2](x)
        for mid in self.mid_blocks:
            x = run(mid, x)
        for up in self.up_blocks:
            skip = skips.pop()
            x = run(up, mx.concatenate([x[:, : skip.shape[1]], skip], axis=-1))
            x = up[2](x)
        return self.final_proj(self.final_block(x))


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))
