"""`speed`: FFmpeg's atempo filter (through PyAV) changes the tempo and keeps the pitch, as a
stream: chunks in, chunks out, with one continuous filter state (no seams)."""

from typing import List

import numpy as np

ATEMPO_MIN = 0.5  # one atempo stage takes 0.5-100; slower speeds chain stages


def stages(speed: float) -> List[float]:
    """atempo factors whose product is SPEED, each within one stage's range."""
    out = []
    while speed < ATEMPO_MIN:
        out.append(ATEMPO_MIN)
        speed /= ATEMPO_MIN
    return out + [speed]


class Tempo:
    """Float32 mono chunks at SAMPLE_RATE played SPEED times faster (0.25-4)."""

    def __init__(self, speed: float, sample_rate: int):
        import av.filter

        self._av = av
        self.sample_rate = sample_rate
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono",
                                       time_base=f"1/{sample_rate}")
        for factor in stages(speed):
            nxt = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._pts = 0

    def _drain(self) -> np.ndarray:
        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (self._av.BlockingIOError, self._av.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        if len(samples) == 0:
            return np.zeros(0, np.float32)
        frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None], format="flt",
                                                 layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self._pts
        self._pts += len(samples)
        self._graph.push(frame)
        return self._drain()

    def finish(self) -> np.ndarray:
        self._graph.push(None)
        return self._drain()
