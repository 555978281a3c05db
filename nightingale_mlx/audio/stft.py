"""STFT and inverse STFT in MLX, matching torch.stft / torch.istft (onesided, center=True).

Layout is channels-last like the rest of the runtime: spectra are (B, frames, n_fft // 2 + 1).
"""

import math
from typing import Optional

import mlx.core as mx


def hann_window(n: int, periodic: bool = True) -> mx.array:
    """torch.hann_window / scipy 'hann' with fftbins=True when periodic."""
    denom = n if periodic else n - 1
    k = mx.arange(n, dtype=mx.float32)
    return 0.5 - 0.5 * mx.cos(2 * math.pi * k / denom)


def reflect_pad(x: mx.array, left: int, right: int) -> mx.array:
    """Reflect-pads the last axis (no edge repeat), like torch's 'reflect' mode."""
    parts = []
    if left:
        parts.append(x[..., left:0:-1])
    parts.append(x)
    if right:
        parts.append(x[..., -2 : -right - 2 : -1])
    return mx.concatenate(parts, axis=-1) if len(parts) > 1 else x


def frame(x: mx.array, n_fft: int, hop: int) -> mx.array:
    """(B, T) -> (B, frames, n_fft) by strided gather."""
    n_frames = 1 + (x.shape[-1] - n_fft) // hop
    idx = mx.arange(n_frames)[:, None] * hop + mx.arange(n_fft)[None, :]
    return x[..., idx]


def stft(x: mx.array, n_fft: int, hop: int, window: mx.array, center: bool = True) -> mx.array:
    """(B, T) real -> (B, frames, n_fft//2 + 1) complex64; window of length n_fft."""
    if center:
        x = reflect_pad(x, n_fft // 2, n_fft // 2)
    return mx.fft.rfft(frame(x, n_fft, hop) * window, axis=-1)


def istft(spec: mx.array, n_fft: int, hop: int, window: mx.array, length: Optional[int] = None) -> mx.array:
    """Inverse of `stft(center=True)`: (B, frames, n_fft//2 + 1) complex -> (B, length or hop * (frames - 1)).

    Overlap-add normalised by the summed squared window, as torch.istft does (`length` as its own).
    """
    frames = mx.fft.irfft(spec, n=n_fft, axis=-1) * window  # (B, F, n_fft)
    B, F, _ = frames.shape
    out_length, length = length, n_fft + hop * (F - 1)
    idx = (mx.arange(F)[:, None] * hop + mx.arange(n_fft)[None, :]).reshape(-1)
    out = mx.zeros((B, length), dtype=frames.dtype).at[:, idx].add(frames.reshape(B, -1))
    env = mx.zeros((length,), dtype=frames.dtype).at[idx].add(mx.tile(window * window, (F,)))
    start, end = n_fft // 2, length - n_fft // 2
    if out_length is not None:
        end = start + out_length
    return out[:, start:end] / mx.maximum(env[start:end], 1e-11)
