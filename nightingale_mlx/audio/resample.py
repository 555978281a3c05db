"""The reference's two resamplers, in numpy.

- `resample_soxr`: librosa's default (`soxr_hq`), used by `librosa.load(sr=24000)` and the
  24k -> 16k step of `prepare_conditionals`. It calls the same libsoxr through the `soxr`
  package and fixes the length as librosa does, so equal soxr versions give identical samples.
- `resample_sinc`: torchaudio's `Resample` (sinc_interp_hann, width 6, rolloff 0.99), used by
  `S3Gen.embed_ref` for its 16 kHz path; a port of its polyphase kernel and strided conv.
"""

import math
from functools import lru_cache

import numpy as np


def resample_soxr(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """librosa.resample(res_type='soxr_hq'): soxr, then zero-pad/trim to ceil(len * ratio)."""
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    import soxr  # runtime dependency of voice preparation only

    out = soxr.resample(wav, orig_sr, target_sr, quality="soxr_hq")
    n = int(np.ceil(wav.shape[-1] * float(target_sr) / orig_sr))
    if out.shape[-1] < n:
        out = np.pad(out, (0, n - out.shape[-1]))
    return np.ascontiguousarray(out[:n], dtype=np.float32)


@lru_cache(maxsize=8)
def sinc_kernel(orig_sr: int, target_sr: int, width: int = 6, rolloff: float = 0.99):
    """torchaudio's `_get_sinc_resample_kernel` (hann): ((new, 2*w + orig) float32, w), reduced rates."""
    g = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // g, target_sr // g
    base = min(orig, new) * rolloff
    w = math.ceil(width * orig / base)
    idx = np.arange(-w, w + orig, dtype=np.float64)[None] / orig
    # torchaudio divides an integer arange in the default float32 before adding the float64 idx.
    t = (np.arange(0, -new, -1) / new).astype(np.float32).astype(np.float64)[:, None] + idx
    t = np.clip(t * base, -width, width)
    window = np.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    return (kernel * window * base / orig).astype(np.float32), w


def resample_sinc(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """torchaudio.transforms.Resample(orig_sr, target_sr)(wav) for a 1-D float signal."""
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    g = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // g, target_sr // g
    kernel, w = sinc_kernel(orig_sr, target_sr)
    length = wav.shape[-1]
    padded = np.pad(wav, (w, w + orig))
    n_frames = (padded.size - kernel.shape[1]) // orig + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig][:n_frames]
    out = (frames @ kernel.T).reshape(-1)  # (frames, new) -> interleaved output phases
    return np.ascontiguousarray(out[: int(math.ceil(new * length / orig))], dtype=np.float32)
