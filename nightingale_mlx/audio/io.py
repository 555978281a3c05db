"""Reading and writing audio files (soundfile): float32 mono in, wav/flac out, clear errors.

`load_audio` downmixes any channel count by averaging, as `librosa.load` (and so the reference)
does, and accepts any sample rate >= 8 kHz; resampling is `resample.py`'s job.
"""

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import soundfile

from .resample import resample_soxr

MIN_SAMPLE_RATE = 8000
# Peak below this (about -100 dBFS, under 16-bit quantisation) counts as silence.
SILENCE_PEAK = 1e-5


class AudioError(ValueError):
    """Reference audio that cannot be used; the message says what to do."""


def load_audio(path) -> Tuple[np.ndarray, int]:
    """Reads any format soundfile knows -> (float32 mono samples, sample rate). Not yet validated
    for length or silence: `check_voice_audio` does that for a reference clip."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such audio file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory; pass an audio file (wav, flac, ogg, ...)")
    try:
        info = soundfile.info(str(path))
        data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: unreadable or truncated audio file ({e}); use wav, flac or ogg") from None
    if (info.frames and data.shape[0] < info.frames) or _wav_truncated(path, info):
        raise AudioError(f"{path}: truncated audio file; re-export it")
    if sr < MIN_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz; use a higher-rate recording")
    # (frames, channels) -> mono by the channel mean, as librosa.to_mono.
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)), int(sr)


def _wav_truncated(path: Path, info) -> bool:
    """libsndfile reads a cut-short WAV silently; its data chunk declares more bytes than remain."""
    if info.format != "WAV":
        return False
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return False
        while True:
            head = f.read(8)
            if len(head) < 8:
                return False
            declared = int.from_bytes(head[4:8], "little")
            if head[:4] == b"data":
                # 0 and 0xFFFFFFFF mark streamed files of unknown length.
                return declared not in (0, 0xFFFFFFFF) and f.tell() + declared > size
            f.seek(declared + (declared & 1), 1)


def check_voice_audio(wav: np.ndarray, sr: int, name: str = "reference audio",
                      min_seconds: float = 1.0) -> np.ndarray:
    """Validates a reference clip: float, 1-D (or downmixable), finite, long enough, not silent."""
    wav = np.asarray(wav)
    if not np.issubdtype(wav.dtype, np.floating):
        raise AudioError(f"{name}: samples must be floats in [-1, 1], got {wav.dtype}")
    if wav.ndim == 2:  # (samples, channels)
        wav = wav.mean(axis=1)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D signal (or samples x channels), got shape {wav.shape}")
    if sr < MIN_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz")
    if wav.size == 0:
        raise AudioError(f"{name}: is empty; record at least {min_seconds:g} s of speech")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: contains NaN or infinite samples; re-export the file")
    if wav.size < min_seconds * sr:
        raise AudioError(f"{name}: {wav.size / sr:.2f} s is too short; use at least {min_seconds:g} s of speech")
    if np.abs(wav).max() < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent; use a recording of speech")
    return wav.astype(np.float32, copy=False)


def load_checked(wav_or_path: Union[str, Path, np.ndarray], sample_rate: Optional[int], rate: int,
                 min_seconds: float, name: str, error: type = AudioError, path_prefix: str = "") -> np.ndarray:
    """A path, or samples with their sample_rate -> validated (`check_voice_audio`) float32 mono at
    `rate` (soxr_hq, as `librosa.load(sr=rate)`). Errors call samples `name` and a file `path_prefix`
    + its path; samples without a sample_rate raise `error`."""
    if isinstance(wav_or_path, (str, Path)):
        wav, sr = load_audio(wav_or_path)
        name = f"{path_prefix}{wav_or_path}"
    else:
        if sample_rate is None:
            raise error("pass sample_rate with a sample array")
        wav, sr = wav_or_path, int(sample_rate)
    wav = check_voice_audio(wav, sr, name, min_seconds)
    return resample_soxr(wav, sr, rate)


def save_audio(path, samples: np.ndarray, sample_rate: int, float32: bool = False) -> Path:
    """Writes float32 samples (mono (N,) or (N, channels)) as wav (16-bit PCM, or 32-bit float with
    float32) or flac (16-bit). The same samples always give the same bytes (no timestamps)."""
    path = Path(path)
    fmt = {".wav": ("WAV", "FLOAT" if float32 else "PCM_16"), ".flac": ("FLAC", "PCM_16")}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unsupported output format; use .wav or .flac")
    samples = np.asarray(samples, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    try:
        soundfile.write(str(path), samples, int(sample_rate), format=fmt[0], subtype=fmt[1])
    except (OSError, RuntimeError) as e:  # LibsndfileError (a RuntimeError) says only "System error"
        raise AudioError(f"{path}: cannot write there ({e}); check the directory exists and is writable") from None
    if fmt == ("WAV", "FLOAT"):
        _zero_peak_timestamp(path)
    return path


def _zero_peak_timestamp(path: Path) -> None:
    """libsndfile's PEAK chunk (float wav) holds the write time: zeroed, so a seed gives the same bytes."""
    with open(path, "r+b") as f:
        head = f.read(128)
        at = head.find(b"PEAK")
        if at >= 0:  # chunk id, size, version, then the 4-byte timestamp
            f.seek(at + 12)
            f.write(b"\0\0\0\0")
