"""Streaming encoders: float32 chunks in, bytes of ONE valid stream of the format out.

Every chunk continues the same stream (one header, one encoder state), never a file per chunk, so
the seams don't click (mlx-audio's #898). pcm and wav are raw 16-bit samples; the compressed
formats use PyAV (FFmpeg's encoders) writing to a non-seekable sink, so nothing is patched later.
"""

import struct
from typing import Callable, Dict, Optional

import numpy as np

from .errors import APIError

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
# format -> (FFmpeg encoder, container, muxer options). flush_packets hands each packet over at
# once; Ogg pages otherwise wait for a second of audio.
AV_FORMATS = {
    "mp3": ("libmp3lame", "mp3", {}),
    "opus": ("libopus", "ogg", {"page_duration": "20000"}),
    "aac": ("aac", "adts", {}),
    "flac": ("flac", "flac", {}),
}
STREAMING_SIZE = 0xFFFFFFFF  # RIFF/data sizes of a WAV whose length is not known yet


def to_int16(samples: np.ndarray) -> bytes:
    """Float [-1, 1] -> 16-bit little-endian PCM (clipped, rounded as soundfile does)."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class PcmEncoder:
    """OpenAI's `pcm`: raw 16-bit signed little-endian mono samples, no header."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    def encode(self, samples: np.ndarray) -> bytes:
        return to_int16(samples)

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    """A 16-bit PCM WAV whose header comes first with unknown (maximal) sizes, as streamed WAVs do."""

    def __init__(self, sample_rate: int):
        super().__init__(sample_rate)
        self._header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", STREAMING_SIZE, b"WAVE", b"fmt ", 16, 1, 1,
                                   sample_rate, sample_rate * 2, 2, 16, b"data", STREAMING_SIZE)

    def encode(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + to_int16(samples)

    def finish(self) -> bytes:
        return self.encode(np.zeros(0, np.float32))  # the header alone, if no audio came at all


class _Sink:
    """A write-only file for PyAV: without seek() the muxer writes a streamable file."""

    def __init__(self):
        self.parts = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class AvEncoder:
    """mp3 / opus (in Ogg) / aac (ADTS) / flac through one PyAV encoder kept open for the stream."""

    def __init__(self, fmt: str, sample_rate: int):
        import av

        codec, container, options = AV_FORMATS[fmt]
        self.sample_rate = sample_rate
        self._sink = _Sink()
        self._out = av.open(self._sink, "w", format=container, options={"flush_packets": "1", **options})
        self._stream = self._out.add_stream(codec, rate=sample_rate, layout="mono")
        self._frame = av.AudioFrame
        self._pts = 0

    def _mux(self, frame) -> bytes:
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        return self._sink.take()

    def encode(self, samples: np.ndarray) -> bytes:
        if len(samples) == 0:
            return b""
        # The same 16-bit samples as pcm/wav: a FLAC decodes to exactly those, the lossy codecs start from them.
        pcm = np.frombuffer(to_int16(samples), "<i2")[None]
        frame = self._frame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self._pts
        self._pts += len(samples)
        return self._mux(frame)

    def finish(self) -> bytes:
        out = self._mux(None)  # flush the encoder's delay
        self._out.close()
        return out + self._sink.take()


def _av_missing(fmt: str) -> Optional[str]:
    """Why FORMAT cannot be encoded here, or None."""
    try:
        import av
    except ImportError:
        return f"response_format {fmt} needs PyAV, which is not installed: pip install 'nightingale-mlx[server]'"
    codec = AV_FORMATS[fmt][0]
    if codec not in av.codecs_available:
        return f"response_format {fmt} needs FFmpeg's {codec} encoder, which this PyAV build lacks; use wav, pcm or flac"
    return None


ENCODERS: Dict[str, Callable] = {"pcm": PcmEncoder, "wav": WavEncoder}


def check_format(fmt: str, missing: Callable[[str], Optional[str]] = _av_missing) -> None:
    """A 400 for a format this server cannot encode, naming the fix when a library is missing."""
    if fmt in ENCODERS:
        return
    if fmt not in AV_FORMATS:
        raise APIError(400, f"response_format {fmt!r} is not supported; use one of {', '.join(FORMATS)}",
                       param="response_format")
    reason = missing(fmt)
    if reason:
        raise APIError(400, reason, param="response_format", code="encoder_not_installed")


def make_encoder(fmt: str, sample_rate: int):
    """A fresh encoder for one response (check_format first)."""
    return ENCODERS[fmt](sample_rate) if fmt in ENCODERS else AvEncoder(fmt, sample_rate)
