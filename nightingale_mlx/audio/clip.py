"""`Audio`: what generate() returns — float32 samples at a sample rate, savable and playable."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import save_audio


class PlaybackError(RuntimeError):
    """No audio output device, or the playback extra is not installed."""


@dataclass
class Audio:
    samples: np.ndarray  # (n,) float32 in [-1, 1]
    sample_rate: int
    info: dict = field(default_factory=dict)  # timings and token counts of the run that made it

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def save(self, path, float32: bool = False) -> Path:
        """Writes .wav (16-bit PCM; 32-bit float with float32) or .flac (16-bit), chosen by the extension."""
        return save_audio(path, self.samples, self.sample_rate, float32)

    def play(self, blocking: bool = True) -> None:
        play(self.samples, self.sample_rate, blocking)


def play(samples: np.ndarray, sample_rate: int, blocking: bool = True) -> None:
    try:
        import sounddevice as sd
    except ImportError:
        raise PlaybackError("playback needs sounddevice: pip install 'nightingale-mlx[playback]'") from None
    except OSError as e:  # PortAudio missing
        raise PlaybackError(f"no audio playback available ({e})") from None
    try:
        sd.play(np.asarray(samples, dtype=np.float32), sample_rate)
        if blocking:
            sd.wait()
    except Exception as e:  # PortAudioError when there is no output device
        raise PlaybackError(f"could not play audio: {e}") from None
