"""Plays a stream of chunks as they arrive: a sounddevice callback fed from a jitter buffer.

Playback starts once `prebuffer_s` of audio is queued (or the stream ended); if the producer
stalls, the callback plays silence and counts an underrun instead of failing.
"""

import threading
from collections import deque

import numpy as np

from .clip import PlaybackError

PREBUFFER_S = 0.3  # absorbs the jitter of chunk arrival
BLOCK_SIZE = 1024  # samples per callback


class JitterBuffer:
    """A thread-safe FIFO of samples: `write` from the producer, `read` from the audio callback."""

    def __init__(self, prebuffer: int):
        self._chunks, self._offset, self._size = deque(), 0, 0
        self._lock = threading.Lock()
        self.prebuffer, self.started, self.closed, self.underruns = prebuffer, False, False, 0
        self.drained = threading.Event()

    def write(self, samples: np.ndarray) -> None:
        with self._lock:
            if len(samples):
                self._chunks.append(np.asarray(samples, np.float32))
                self._size += len(samples)
            self.started = self.started or self._size >= self.prebuffer

    def close(self) -> None:
        """No more audio: play out what is queued."""
        with self._lock:
            self.closed = self.started = True
            if self._size == 0:
                self.drained.set()

    def read(self, n: int) -> np.ndarray:
        """n samples; silence where nothing is queued yet (counted as an underrun mid-stream)."""
        out = np.zeros(n, np.float32)
        with self._lock:
            if not self.started:
                return out
            filled = 0
            while filled < n and self._chunks:
                head = self._chunks[0]
                take = min(n - filled, len(head) - self._offset)
                out[filled : filled + take] = head[self._offset : self._offset + take]
                filled, self._offset, self._size = filled + take, self._offset + take, self._size - take
                if self._offset == len(head):
                    self._chunks.popleft()
                    self._offset = 0
            if filled < n:
                if self.closed:
                    self.drained.set()
                else:
                    self.underruns += 1
        return out


class StreamPlayer:
    """`with StreamPlayer(sr) as p: p.write(chunk)`; leaving the block plays out the queue.

    Raises PlaybackError when sounddevice or an output device is missing.
    """

    def __init__(self, sample_rate: int, prebuffer_s: float = PREBUFFER_S):
        try:
            import sounddevice as sd
        except (ImportError, OSError) as e:
            raise PlaybackError(f"playback needs sounddevice and PortAudio ({e}); "
                                "pip install 'nightingale-mlx[playback]'") from None
        self.buffer = JitterBuffer(int(prebuffer_s * sample_rate))

        def callback(outdata, frames, _time, _status):
            outdata[:, 0] = self.buffer.read(frames)

        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32",
                                           blocksize=BLOCK_SIZE, callback=callback)
        except Exception as e:  # PortAudioError: no output device
            raise PlaybackError(f"no audio output device ({e})") from None

    def write(self, samples: np.ndarray) -> None:
        self.buffer.write(samples)

    def __enter__(self):
        self._stream.start()
        return self

    def __exit__(self, *exc):
        self.buffer.close()
        if exc[0] is None:
            self.buffer.drained.wait(timeout=600)
        self._stream.stop()
        self._stream.close()
        return False
