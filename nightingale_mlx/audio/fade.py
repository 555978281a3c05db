"""The fade S3Gen applies to the start of every vocoded utterance (reference `S3Token2Wav.trim_fade`)."""

import math

import mlx.core as mx

TRIM_FADE_SAMPLES = 480  # S3GEN_SR // 50: 20 ms of silence, then 20 ms of raised-cosine fade-in


def trim_fade_window(n_trim: int = TRIM_FADE_SAMPLES) -> mx.array:
    """(2 n_trim,): n_trim zeros, then (cos(linspace(pi, 0, n_trim)) + 1) / 2."""
    ramp = (mx.cos(mx.linspace(math.pi, 0.0, n_trim)) + 1) / 2
    return mx.concatenate([mx.zeros((n_trim,)), ramp])


def trim_fade(wav: mx.array, n_trim: int = TRIM_FADE_SAMPLES) -> mx.array:
    """Silences the first n_trim samples of wav (..., N) and fades the next n_trim in.

    Reduces the "spillover" of the reference clip into the first frames (the reference's ad-hoc fix).
    Shorter signals get the window's start.
    """
    fade = trim_fade_window(n_trim)
    n = min(wav.shape[-1], fade.shape[0])
    return mx.concatenate([wav[..., :n] * fade[:n], wav[..., n:]], axis=-1)
