"""Leading/trailing silence trimming: `librosa.effects.trim(y, top_db)` with librosa's defaults
(frame 2048, hop 512, ref = max frame RMS), as the voice encoder applies it (spec §4)."""

import numpy as np

AMIN_POWER = 1e-10  # amplitude_to_db's amin (1e-5) squared


def trim_silence(wav: np.ndarray, top_db: float = 20.0, frame_length: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Returns wav[start:end], keeping the frames within `top_db` of the loudest frame's RMS."""
    wav = np.asarray(wav, dtype=np.float32)
    half = frame_length // 2
    padded = np.pad(wav, (half, half))  # librosa.feature.rms: center=True, constant padding
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length]
    rms = np.sqrt(np.mean(frames**2, axis=-1))
    # amplitude_to_db squares the RMS again, and its reference is the squared max RMS.
    power, ref = rms**2, rms.max() ** 2
    db = 10.0 * np.log10(np.maximum(AMIN_POWER, power)) - 10.0 * np.log10(np.maximum(AMIN_POWER, ref))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return wav[:0]
    start = int(loud[0]) * hop_length
    end = min(wav.shape[-1], (int(loud[-1]) + 1) * hop_length)
    return wav[start:end]
