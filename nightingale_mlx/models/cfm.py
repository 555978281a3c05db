"""CausalConditionalCFM: conditional flow matching solved with Euler steps and classifier-free guidance.

x0 = noise; for k < n: v = (1 + w) v(x, t_k | mu, spks, cond) - w v(x, t_k | 0, 0, 0);
x += (t_{k+1} - t_k) v, on a cosine schedule t = 1 - cos(pi/2 * linspace(0, 1, n + 1)).
Both guidance branches run as one batch of 2, as in the reference.
The meanflow decoder (Turbo) is `basic_euler`: linear times, v(x, t, r | mu, spks, cond) with the
step's end time r, batch 1, no CFG (it was distilled with CFG folded in).
"""

import math
from typing import Iterator, Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import FlowConfig
from .unet import ConditionalDecoder


class FlowError(ValueError):
    pass


def cosine_t_span(n_timesteps: int) -> mx.array:
    """(n + 1,) times from 0 to 1, dense near t = 0 (the reference's 'cosine' t_scheduler)."""
    t = mx.linspace(0, 1, n_timesteps + 1, dtype=mx.float32)
    return 1 - mx.cos(t * 0.5 * math.pi)


class CausalConditionalCFM(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.estimator = ConditionalDecoder(cfg)
        self.inference_cfg_rate = cfg.inference_cfg_rate
        self.n_timesteps = cfg.n_timesteps
        self.meanflow = cfg.meanflow

    def solve(
        self, noise: mx.array, mu: mx.array, spks: mx.array, cond: mx.array, n_timesteps: Optional[int] = None
    ) -> Iterator[mx.array]:
        """Yields x after each Euler step (lazily; the last one is the mel). All (1, T, 80)."""
        n = self.n_timesteps if n_timesteps is None else n_timesteps
        if n < 1:
            raise FlowError(f"n_timesteps must be >= 1, got {n}")
        if noise.shape != mu.shape:
            raise FlowError(f"noise shape {noise.shape} != mu shape {mu.shape}; pass (1, T, 80) noise")
        if self.meanflow:
            yield from self._solve_meanflow(noise, mu, spks, cond, n)
            return
        t_span = cosine_t_span(n)
        # The unconditional branch sees zero mu, speaker and prompt, with the same x and t.
        mu_in = mx.concatenate([mu, mx.zeros_like(mu)])
        spks_in = mx.concatenate([spks, mx.zeros_like(spks)])
        cond_in = mx.concatenate([cond, mx.zeros_like(cond)])
        w = self.inference_cfg_rate
        x = noise
        for k in range(n):
            t = t_span[k]
            v = self.estimator(mx.concatenate([x, x]), mu_in, mx.broadcast_to(t, (2,)), spks_in, cond_in)
            x = x + (t_span[k + 1] - t) * ((1.0 + w) * v[:1] - w * v[1:])
            yield x

    def _solve_meanflow(self, x: mx.array, mu, spks, cond, n: int) -> Iterator[mx.array]:
        t_span = mx.linspace(0, 1, n + 1, dtype=mx.float32)  # no cosine warp for meanflow
        for k in range(n):
            t, r = t_span[k : k + 1], t_span[k + 1 : k + 2]
            x = x + (r - t) * self.estimator(x, mu, t, spks, cond, r)
            yield x

    def __call__(self, mu: mx.array, spks: mx.array, cond: mx.array, n_timesteps: Optional[int] = None,
                 noise: Optional[mx.array] = None, key: Optional[mx.array] = None) -> mx.array:
        """The generated mel (1, T, 80); the noise is `noise` or drawn from `key` (else the global RNG)."""
        if noise is None:
            noise = mx.random.normal(mu.shape, dtype=mu.dtype, key=key)
        x = None
        for x in self.solve(noise, mu, spks, cond, n_timesteps):
            pass
        return x
