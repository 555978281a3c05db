"""Mel spectrograms for the three places the reference computes one, from one implementation.

- `VE_MEL`: the voice encoder's librosa mel (40 bins, power 2, no log), spec §4.
- `S3_TOKENIZER_MEL`: the S3 tokenizer's whisper-style log10 mel (128 bins, last frame
  dropped, clamped to max - 8, scaled), spec §5.1.
- `S3GEN_MEL`: S3Gen's 24 kHz reference mel (80 bins, manual reflect pad, ln), spec §5.3.

Filterbanks are librosa's Slaney mel filters, computed in numpy (no librosa at runtime).
Outputs are channels-last: (frames, n_mels).
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import mlx.core as mx
import numpy as np

from .stft import hann_window, reflect_pad, stft


def _hz_to_mel(f):
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) with Slaney norm: (n_mels, n_fft//2 + 1) float32."""
    fmax = sr / 2.0 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    # librosa fills a float32 array row by row; rounding once at the end matches it.
    return weights.astype(np.float32)


@dataclass(frozen=True)
class MelSpec:
    """How one component computes its mel (see the module docstring)."""

    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int
    fmin: float = 0.0
    fmax: Optional[float] = None
    center: bool = True  # torch/librosa center=True with reflect padding
    pad: int = 0  # manual reflect pad on both sides (used with center=False)
    magnitude_eps: Optional[float] = None  # sqrt(re^2 + im^2 + eps) instead of power
    drop_last_frame: bool = False
    log: Optional[str] = None  # None, "ln" (clamp 1e-5) or "whisper" (log10, max-8, (x+4)/4)


VE_MEL = MelSpec(16000, 400, 160, 40, fmin=0.0, fmax=8000.0)
S3_TOKENIZER_MEL = MelSpec(16000, 400, 160, 128, drop_last_frame=True, log="whisper")
S3GEN_MEL = MelSpec(24000, 1920, 480, 80, fmin=0.0, fmax=8000.0, center=False, pad=(1920 - 480) // 2,
                    magnitude_eps=1e-9, log="ln")

LN_CLAMP = 1e-5
LOG10_CLAMP = 1e-10
WHISPER_DYNAMIC_RANGE = 8.0


def mel_spectrogram(wav, spec: MelSpec) -> mx.array:
    """(T,) float samples at spec.sample_rate -> (frames, n_mels) float32 per `spec`."""
    x = mx.array(np.asarray(wav, dtype=np.float32))[None]
    if spec.pad:
        x = reflect_pad(x, spec.pad, spec.pad)
    X = stft(x, spec.n_fft, spec.hop, hann_window(spec.n_fft), center=spec.center)[0]  # (F, bins)
    if spec.drop_last_frame:
        X = X[:-1]
    power = mx.real(X) ** 2 + mx.imag(X) ** 2
    feats = mx.sqrt(power + spec.magnitude_eps) if spec.magnitude_eps is not None else power
    mel = feats @ mx.array(mel_filters(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)).T
    if spec.log == "ln":
        return mx.log(mx.maximum(mel, LN_CLAMP))
    if spec.log == "whisper":
        # The clamp uses the max over this one clip: tokenize one reference at a time (spec §5.4a).
        log_spec = mx.log10(mx.maximum(mel, LOG10_CLAMP))
        log_spec = mx.maximum(log_spec, log_spec.max() - WHISPER_DYNAMIC_RANGE)
        return (log_spec + 4.0) / 4.0
    return mel
