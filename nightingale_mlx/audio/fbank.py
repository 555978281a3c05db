"""Kaldi filterbank features for CAMPPlus: `torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=80)`
with its defaults, then the per-utterance mean subtraction of CAMPPlus's `extract_feature` (spec §5.2).

Defaults reproduced: 25 ms frames, 10 ms shift, snip_edges, no dither, DC removal per frame,
pre-emphasis 0.97 (first sample replicated), povey window, FFT padded to 512, power spectrum,
Kaldi mel banks (1127 ln(1 + f/700), 20 Hz to Nyquist, unnormalised), log floored at float32 eps.
"""

from functools import lru_cache

import mlx.core as mx
import numpy as np

from .stft import frame, hann_window

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
POVEY_POWER = 0.85
LOW_FREQ = 20.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: int, low_freq: float = LOW_FREQ,
                    high_freq: float = 0.0) -> np.ndarray:
    """torchaudio kaldi `get_mel_banks` (no VTLN) padded with a zero Nyquist column: (num_bins, n_fft//2 + 1)."""
    nyquist = 0.5 * sample_rate
    high_freq = high_freq + nyquist if high_freq <= 0 else high_freq
    lo, hi = _kaldi_mel(low_freq), _kaldi_mel(high_freq)
    delta = (hi - lo) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    mel = _kaldi_mel(sample_rate / n_fft * np.arange(n_fft // 2))[None]
    banks = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


def kaldi_fbank(wav, sample_rate: int = 16000, num_mel_bins: int = 80, subtract_mean: bool = True) -> mx.array:
    """(T,) float samples in [-1, 1] -> (frames, num_mel_bins) log mel energies, frames = 1 + (T - 400)//160."""
    window_size = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    n_fft = 1 << (window_size - 1).bit_length()  # next power of two
    x = mx.array(np.asarray(wav, dtype=np.float32))
    if x.shape[0] < window_size:
        raise ValueError(f"audio of {x.shape[0]} samples is shorter than one {window_size}-sample frame")
    frames = frame(x, window_size, shift)  # (m, window_size)
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = mx.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - PREEMPHASIS * previous
    frames = frames * hann_window(window_size, periodic=False) ** POVEY_POWER
    frames = mx.pad(frames, [(0, 0), (0, n_fft - window_size)])
    spectrum = mx.abs(mx.fft.rfft(frames, axis=-1)) ** 2
    energies = spectrum @ mx.array(kaldi_mel_banks(num_mel_bins, n_fft, sample_rate)).T
    feats = mx.log(mx.maximum(energies, FLOAT32_EPS))
    return feats - feats.mean(axis=0, keepdims=True) if subtract_mean else feats
