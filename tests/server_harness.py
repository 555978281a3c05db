"""A real `nightingale serve` on 127.0.0.1 in a subprocess, for the server tests and bench.server."""

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180  # a cold cache builds the synthetic model first
# Small chunks so that a short test sentence still streams in several pieces.
FAST_CHUNKS = ["--first-chunk-tokens", "4", "--chunk-tokens", "6"]


class Server:
    """`python -m nightingale_mlx serve ARGS` on a free port; stderr goes to a log file."""

    def __init__(self, cache: Path, log: Path, *args, env=None, model: str = "synthetic"):
        self.log = log
        cmd = [sys.executable, "-m", "nightingale_mlx", "serve", "--model", model, "--port", "0", "-q", *map(str, args)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "wb"),
                                     env={**os.environ, "NIGHTINGALE_CACHE": str(cache), **(env or {})})
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = re.search(r"serving on (http://\S+)", self.log.read_text(errors="replace"))
            if found:
                url = found.group(1)
                if self._healthy(url):
                    return url
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start in {START_TIMEOUT_S} s:\n{self.log.read_text()}")

    @staticmethod
    def _healthy(url) -> bool:
        import httpx

        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def rss_mb(self) -> float:
        """The server process's resident memory (VmRSS), MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def wait_idle(self, timeout: float = 60) -> dict:
        """/health once nothing runs or waits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if not h["queue"]["running"] and not h["queue"]["waiting"]:
                return h
            time.sleep(0.01)
        raise TimeoutError("the server stayed busy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def decode(data: bytes, fmt: str):
    """Bytes of FORMAT -> (float32 mono samples, sample rate), decoded by soundfile or PyAV."""
    import soundfile as sf

    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767, 24000
    if fmt == "wav":
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
        return samples, rate
    # A streamed FLAC cannot state its length up front; libsndfile then fails at the end, FFmpeg does not.
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    samples = np.concatenate(frames)
    if samples.dtype == np.int16:  # FLAC decodes to its 16-bit samples
        return samples.astype(np.float32) / 32767, rate
    return samples.astype(np.float32), rate
