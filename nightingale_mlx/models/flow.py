"""CausalMaskedDiffWithXvec: S3 speech tokens + a voice prompt -> mel frames (S3Gen's first half).

tokens = prompt | generated -> embedding -> conformer (x2 frames) -> encoder_proj = mu;
cond = the prompt mel on the first Tm frames; CFM (spec §5.5-§5.7) -> mel; the prompt frames are
cut off. All sequences are channels-last (B, T, 80); batch size 1.
"""

from typing import Iterator, Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import FlowConfig
from .cfm import CausalConditionalCFM, FlowError
from .conformer import UpsampleConformerEncoder

NORMALIZE_EPS = 1e-12  # F.normalize default


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoder(cfg)
        self.encoder_proj = nn.Linear(cfg.encoder_size, cfg.output_size)
        self.decoder = CausalConditionalCFM(cfg)

    def _check(self, tokens, prompt_tokens, prompt_feat, embedding) -> None:
        for name, a, ndim in (("tokens", tokens, 2), ("prompt_tokens", prompt_tokens, 2),
                              ("prompt_feat", prompt_feat, 3), ("embedding", embedding, 2)):
            if a.ndim != ndim or a.shape[0] != 1:
                raise FlowError(f"{name} must have {ndim} dims and batch size 1, got shape {a.shape}")
        if prompt_feat.shape[2] != self.cfg.output_size:
            raise FlowError(f"prompt_feat must be (1, Tm, {self.cfg.output_size}) channels-last, got {prompt_feat.shape}")
        if embedding.shape[1] != self.cfg.spk_embed_dim:
            raise FlowError(f"embedding must be the (1, {self.cfg.spk_embed_dim}) CAMPPlus x-vector, got {embedding.shape}")
        if tokens.shape[1] == 0:
            raise FlowError("no speech tokens to synthesise")
        frames = self.cfg.token_mel_ratio * (tokens.shape[1] + prompt_tokens.shape[1])
        ids = mx.concatenate([prompt_tokens, tokens], axis=1)
        if ids.size and (int(mx.min(ids)) < 0 or int(mx.max(ids)) >= self.cfg.vocab_size):
            raise FlowError(f"speech tokens must be in 0..{self.cfg.vocab_size - 1}; drop T3's start/stop tokens first")
        if prompt_feat.shape[1] > frames:
            raise FlowError(f"prompt mel has {prompt_feat.shape[1]} frames but the prompt + generated tokens give "
                            f"only {frames}; pass the prompt tokens that belong to this prompt mel")

    def prepare(self, tokens: mx.array, prompt_tokens: mx.array, prompt_feat: mx.array, embedding: mx.array):
        """The CFM's conditioning: mu (1, T, 80), spks (1, 80), cond (1, T, 80), T = 2 (Np + N)."""
        self._check(tokens, prompt_tokens, prompt_feat, embedding)
        norm = mx.sqrt(mx.sum(embedding * embedding, axis=1, keepdims=True))
        spks = self.spk_embed_affine_layer(embedding / mx.maximum(norm, NORMALIZE_EPS))
        ids = mx.concatenate([prompt_tokens, tokens], axis=1).astype(mx.int32)
        mu = self.encoder_proj(self.encoder(self.input_embedding(ids)))
        # cond carries the prompt mel; with an odd Tm (= 2 Np + 1) it covers the first generated
        # frame too, which is then cut off with the prompt: 2N - 1 frames come out (spec §5.5).
        tail = mx.zeros((1, mu.shape[1] - prompt_feat.shape[1], mu.shape[2]), dtype=mu.dtype)
        cond = mx.concatenate([prompt_feat.astype(mu.dtype), tail], axis=1)
        return mu, spks, cond

    def trajectory(self, tokens, prompt_tokens, prompt_feat, embedding, n_timesteps: Optional[int] = None,
                   noise: Optional[mx.array] = None, key: Optional[mx.array] = None) -> Iterator[mx.array]:
        """Yields mu (1, T, 80), then x (1, T, 80) after each Euler step, prompt frames included."""
        mu, spks, cond = self.prepare(tokens, prompt_tokens, prompt_feat, embedding)
        if noise is None:
            noise = mx.random.normal(mu.shape, dtype=mu.dtype, key=key)
        elif noise.shape != mu.shape:
            raise FlowError(f"noise must be (1, {mu.shape[1]}, {mu.shape[2]}) (prompt + generated frames), "
                            f"got {noise.shape}")
        yield mu
        yield from self.decoder.solve(noise, mu, spks, cond, n_timesteps)

    def inference(self, tokens: mx.array, prompt_tokens: mx.array, prompt_feat: mx.array, embedding: mx.array,
                  n_timesteps: Optional[int] = None, noise: Optional[mx.array] = None,
                  key: Optional[mx.array] = None) -> mx.array:
        """Speech tokens (1, N) + voice -> generated mel (1, T_gen, 80), T_gen = 2N, or 2N - 1 for an odd
        prompt mel length. `noise` (1, Tm + T_gen, 80) replaces the CFM's Gaussian draw (else `key`)."""
        x = None
        for x in self.trajectory(tokens, prompt_tokens, prompt_feat, embedding, n_timesteps, noise, key):
            pass
        return x[:, prompt_feat.shape[1]:]
