"""HiFT's excitation: the F0 predictor and the neural-source-filter (NSF) harmonic source.

Channels-last throughout: mels (B, T, 80), f0 (B, T) per mel frame, the source (B, N, 1) per sample.
"""

import math
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import HiFTConfig


class ELU(nn.Module):
    """Parameter-free stand-in so `condnet` indices match the reference Sequential (0, 2, 4, ...)."""

    def __call__(self, x: mx.array) -> mx.array:
        return nn.elu(x)


class ConvRNNF0Predictor(nn.Module):
    """Mel frames -> F0 in Hz per frame: five k3 convs with ELU, a linear head, abs()."""

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        C = cfg.f0_cond_channels
        self.condnet = []
        for i in range(cfg.f0_num_convs):
            self.condnet += [nn.Conv1d(cfg.in_channels if i == 0 else C, C, 3, padding=1), ELU()]
        self.classifier = nn.Linear(C, 1)

    def __call__(self, mel: mx.array) -> mx.array:
        x = mel
        for layer in self.condnet:
            x = layer(x)
        return mx.abs(self.classifier(x)[..., 0])  # (B, T)


def upsample_nearest(f0: mx.array, factor: int) -> mx.array:
    """(B, T) -> (B, T * factor), torch's default `nn.Upsample` mode (nearest, not linear)."""
    return mx.repeat(f0, factor, axis=1)


def harmonic_phases(f0: mx.array, n_harmonics: int, sampling_rate: int, factor: int,
                    start_cycles: Optional[mx.array] = None) -> mx.array:
    """Phase in cycles, in [0, 1), of `cumsum(f0_up * k / sr)` for k = 1..n_harmonics: (B, T*factor, H).

    f0 is per frame and upsampled by repetition, so the increment is constant within a frame: the
    phase there is start[t] + (j + 1) * inc[t]. The frame starts sum up to a minute of cycles, where
    an fp32 sum drifts by whole percent of a cycle, so they are summed in float64 on the CPU
    stream (only T * H values; no float64 on Metal) and wrapped before coming back to fp32.
    `start_cycles` (B, H) is the phase already accumulated before the first frame (streaming).
    """
    B, T = f0.shape
    k = mx.arange(1, n_harmonics + 1, dtype=mx.float32)
    with mx.stream(mx.cpu):
        per_frame = f0.astype(mx.float64)[..., None] * k.astype(mx.float64) * (factor / sampling_rate)
        start = mx.cumsum(per_frame, axis=1) - per_frame  # cycles before each frame, (B, T, H)
        if start_cycles is not None:
            start = start + start_cycles.astype(mx.float64)[:, None, :]
        start = (start - mx.floor(start)).astype(mx.float32)
    inc = f0[..., None] * k / sampling_rate  # cycles per sample, (B, T, H)
    j = mx.arange(1, factor + 1, dtype=mx.float32)[:, None]  # (factor, 1): inclusive cumsum
    phase = start[:, :, None, :] + j * inc[:, :, None, :]  # (B, T, factor, H)
    phase = phase - mx.floor(phase)
    return phase.reshape(B, T * factor, n_harmonics)


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source (SineGen + merge): upsampled f0 -> excitation (B, N, 1).

    Randomness is injectable: `phases` (B, H) start phases in radians (the fundamental's is forced
    to 0, as the reference does after drawing), `noise` (B, N, H) standard normal. What is not
    given is drawn from `key` (or MLX's global generator). `start_cycles` (B, H) continues the
    harmonics' phase from an earlier block (streaming); `noise` then holds this block's samples.
    """

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.n_harmonics = cfg.nb_harmonics + 1
        self.sampling_rate = cfg.sampling_rate
        self.factor = cfg.upsample_factor
        self.sine_amp = cfg.nsf_alpha
        self.noise_std = cfg.nsf_sigma
        self.voiced_threshold = cfg.nsf_voiced_threshold
        self.l_linear = nn.Linear(self.n_harmonics, 1)

    def __call__(
        self,
        f0: mx.array,
        phases: Optional[mx.array] = None,
        noise: Optional[mx.array] = None,
        key: Optional[mx.array] = None,
        start_cycles: Optional[mx.array] = None,
    ) -> mx.array:
        B, T = f0.shape
        H, N = self.n_harmonics, T * self.factor
        phase_key, noise_key = mx.random.split(key) if key is not None else (None, None)
        if phases is None:
            phases = mx.random.uniform(-math.pi, math.pi, (B, H), key=phase_key)
        if noise is None:
            noise = mx.random.normal((B, N, H), key=noise_key)
        _check_shape("phases", phases, (B, H))
        _check_shape("noise", noise, (B, N, H))
        phases = mx.concatenate([mx.zeros((B, 1)), phases[:, 1:]], axis=1)  # fundamental at phase 0

        if start_cycles is not None:
            _check_shape("start_cycles", start_cycles, (B, H))
        theta = 2 * math.pi * harmonic_phases(f0, H, self.sampling_rate, self.factor, start_cycles)
        sine = self.sine_amp * mx.sin(theta + phases[:, None, :])  # (B, N, H)
        uv = (upsample_nearest(f0, self.factor) > self.voiced_threshold).astype(mx.float32)[..., None]
        # Unvoiced samples get noise only, about as loud as the sine would be (std sine_amp / 3).
        noise_amp = uv * self.noise_std + (1 - uv) * (self.sine_amp / 3)
        sine = sine * uv + noise_amp * noise
        return mx.tanh(self.l_linear(sine))  # (B, N, 1)


class InjectedShapeError(ValueError):
    pass


def _check_shape(name: str, x: mx.array, shape: tuple) -> None:
    if tuple(x.shape) != tuple(shape):
        raise InjectedShapeError(f"injected {name} has shape {tuple(x.shape)}; expected {tuple(shape)}")
