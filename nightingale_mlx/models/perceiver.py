"""The T3 conditioning perceiver: 32 learned queries resample the speech-prompt embeddings."""

import mlx.core as mx
import mlx.nn as nn


class AttentionBlock2(nn.Module):
    """Pre-norm multi-head attention with one LayerNorm shared by queries and keys/values."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels, eps=1e-5)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def __call__(self, x1: mx.array, x2: mx.array) -> mx.array:
        n1, n2 = self.norm(x1), self.norm(x2)
        q, k, v = self.to_q(n1), self.to_k(n2), self.to_v(n2)
        B, L, C = q.shape
        H = self.num_heads
        q = q.reshape(B, L, H, C // H).transpose(0, 2, 1, 3)  # (B, H, L, d)
        k = k.reshape(B, k.shape[1], H, C // H).transpose(0, 2, 1, 3)
        v = v.reshape(B, v.shape[1], H, C // H).transpose(0, 2, 1, 3)
        h = mx.fast.scaled_dot_product_attention(q, k, v, scale=(C // H) ** -0.5)
        h = h.transpose(0, 2, 1, 3).reshape(B, L, C)
        return x1 + self.proj_out(h)


class Perceiver(nn.Module):
    def __init__(self, num_queries: int, dim: int, num_heads: int):
        super().__init__()
        self.pre_attention_query = mx.zeros((1, num_queries, dim))
        # One block, applied twice (cross- then self-attention), as in the reference.
        self.attn = AttentionBlock2(dim, num_heads)

    def __call__(self, h: mx.array) -> mx.array:
        query = mx.broadcast_to(self.pre_attention_query, (h.shape[0], *self.pre_attention_query.shape[1:]))
        pre = self.attn(query, h)
        return self.attn(pre, pre)
