"""One model, one worker thread, a bounded FIFO queue.

The model runs one request at a time (`TTS.running` serializes it anyway): a single thread takes
jobs in order, so a queued request never interleaves its chunks with another's. A full queue is a
429 with Retry-After. A job's chunks reach the event loop through an asyncio.Queue; a cancelled
job (client gone) stops after the chunk in progress, closing the stream, which frees the model.
"""

import asyncio
import itertools
import math
import queue
import threading
import time
from typing import Callable, Optional

from .errors import APIError, log

EMA = 0.2  # weight of the newest job in the running estimate of a job's seconds (Retry-After)


class Job:
    """One unit of model work: `work(tts, job)` runs on the worker thread and emits events."""

    _ids = itertools.count(1)

    def __init__(self, loop: asyncio.AbstractEventLoop, work: Callable):
        self.id = next(self._ids)
        self.loop, self.work = loop, work
        self.events: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()
        self.cancelled_at: Optional[float] = None
        self.chunks = 0  # chunks produced
        self.chunks_after_cancel = 0
        self.chunk_seconds = []  # compute seconds of each chunk
        self.submitted = time.perf_counter()
        self.started: Optional[float] = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Asks the worker to stop this job after the chunk in progress (safe from any thread)."""
        if not self._cancel.is_set():
            self.cancelled_at = time.perf_counter()
            self._cancel.set()

    def emit(self, kind: str, payload=None) -> None:
        """Hands an event to the event loop (called on the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancel()

    def chunk(self, payload, seconds: float) -> None:
        self.chunks += 1
        self.chunk_seconds.append(seconds)
        if self.cancelled:
            self.chunks_after_cancel += 1
        self.emit("chunk", payload)


class ModelWorker:
    """Owns the TTS: runs submitted jobs one at a time, in order."""

    def __init__(self, tts, max_queue: int):
        self.tts, self.max_queue = tts, max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.running: Optional[Job] = None
        self.job_seconds = 1.0
        self.served = self.rejected = 0
        self.last_job: dict = {}
        self._thread = threading.Thread(target=self._loop, name="nightingale-model", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: the running estimate of one job."""
        return max(1, math.ceil(self.job_seconds))

    def submit(self, job: Job) -> Job:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.rejected += 1
            seconds = self.retry_after()
            raise APIError(429, f"the server is busy: {self.max_queue} requests are already waiting for the model; "
                                f"retry in {seconds} s", code="queue_full",
                           headers={"Retry-After": str(seconds)}) from None
        return job

    def close(self) -> None:
        """Stops the thread after the job in progress; queued jobs are cancelled."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.cancel()
            job.emit("error", APIError(503, "the server is shutting down"))
        if self.running is not None:
            self.running.cancel()
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.running = job
            start = job.started = time.perf_counter()
            try:
                if not job.cancelled:  # a client that left while queued costs the model nothing
                    job.work(self.tts, job)
            except BaseException as e:  # reported to the request; the worker lives on
                job.emit("error", e)
            finally:
                released = time.perf_counter()
                self.running = None
                self.served += 1
                self._record(job, released - start, released)

    def _record(self, job: Job, seconds: float, released: float) -> None:
        self.job_seconds = (1 - EMA) * self.job_seconds + EMA * seconds
        mean_chunk = sum(job.chunk_seconds) / len(job.chunk_seconds) if job.chunk_seconds else None
        self.last_job = {
            "id": job.id, "seconds": seconds, "queued_s": job.started - job.submitted,
            "first_chunk_s": job.chunk_seconds[0] if job.chunk_seconds else None,
            "chunks": job.chunks, "cancelled": job.cancelled,
            "chunks_after_cancel": job.chunks_after_cancel, "mean_chunk_s": mean_chunk,
            "max_chunk_s": max(job.chunk_seconds, default=None),
            "release_after_cancel_s": (released - job.cancelled_at) if job.cancelled_at else None,
        }
        if job.cancelled:
            log.info("job %d cancelled; model released %.3f s after the client left", job.id,
                     released - job.cancelled_at)
