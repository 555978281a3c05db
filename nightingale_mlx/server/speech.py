"""`POST /v1/audio/speech`: the model's chunks, encoded as they come, as audio or as SSE events."""

import asyncio
import base64
import json
import time
from typing import Optional

import numpy as np

from ..config import SPEECH_TOKENS_PER_SECOND
from .encoders import MEDIA_TYPES, check_format, make_encoder
from .errors import APIError, from_generation, log, one_line
from .schemas import MODEL_IDS, SpeechRequest
from .worker import Job

DISCONNECT_POLL_S = 0.1  # how often a queued request checks that its client is still there
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Settings:
    """What every speech job shares: the model's voices, worker and chunk sizes."""

    def __init__(self, worker, voices, first_chunk_tokens: int, chunk_tokens: int, max_new_tokens=None):
        self.worker, self.voices = worker, voices
        self.first_chunk_tokens, self.chunk_tokens = first_chunk_tokens, chunk_tokens
        self.max_new_tokens = max_new_tokens  # the operator's cap per sentence

    def sampling(self, req: SpeechRequest) -> dict:
        options = req.sampling()
        if self.max_new_tokens is not None:
            options["max_new_tokens"] = min(options["max_new_tokens"] or self.max_new_tokens, self.max_new_tokens)
        return options


def check(req: SpeechRequest):
    """Checks what can be checked before queueing; returns the (validated) language."""
    from ..text import TextError, validate_language

    if req.model not in MODEL_IDS:
        raise APIError(404, f"model {req.model!r} not found; this server speaks with: {', '.join(MODEL_IDS)}",
                       param="model", code="model_not_found")
    if not req.input.strip():
        raise APIError(400, "input is empty; give some words to speak", param="input")
    try:
        return validate_language(req.language)
    except TextError as e:
        raise APIError(400, one_line(e), param="language", code="unsupported_language") from None


def speak(tts, job: Job, req: SpeechRequest, language: str, voice_path, settings: Settings) -> None:
    """Runs on the model's worker: streams TTS.stream() chunks to the job, stopping once it is cancelled."""
    voice = settings.voices.load(voice_path)
    chunks = tts.stream(req.input, language=language, voice=voice, first_chunk_tokens=settings.first_chunk_tokens,
                        chunk_tokens=settings.chunk_tokens, **settings.sampling(req))
    samples, t = 0, job.started  # the first chunk's time includes loading the voice
    try:
        for chunk in chunks:
            now = time.perf_counter()
            job.chunk(chunk.samples, now - t)
            t, samples = now, samples + len(chunk.samples)
            if job.cancelled:
                return  # the client left: the finally below frees the model now
    finally:
        chunks.close()
    text_tokens = len(tts.tokenizer.text_tokens(req.input, language))
    speech_tokens = round(samples / tts.sample_rate * SPEECH_TOKENS_PER_SECOND)
    job.emit("done", {"input_tokens": text_tokens, "output_tokens": speech_tokens,
                      "total_tokens": text_tokens + speech_tokens})


async def first_event(job: Job, request) -> Optional[tuple]:
    """Waits for the job's first event (through the queue); None if the client left meanwhile."""
    getter = asyncio.ensure_future(job.events.get())
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if done:
                return getter.result()
            if await request.is_disconnected():
                return None
    finally:
        if not getter.done():
            getter.cancel()
            job.cancel()


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def body(job: Job, first: tuple, req: SpeechRequest, sample_rate: int):
    """The response body: one encoder (and tempo filter) for the whole stream."""
    encoder = make_encoder(req.response_format, sample_rate)
    tempo = None
    if req.speed != 1.0:
        from .tempo import Tempo

        tempo = Tempo(req.speed, sample_rate)
    sse = req.stream_format == "sse"
    finished = False
    try:
        kind, payload = first
        while True:
            if kind == "chunk":
                data = encoder.encode(tempo.process(payload) if tempo else payload)
            elif kind == "done":
                tail = tempo.finish() if tempo else np.zeros(0, np.float32)
                data = encoder.encode(tail) + encoder.finish()
            else:
                err = from_generation(payload)
                log.error("speech job %d failed after the response started: %s", job.id, err.message)
                if sse:
                    yield _sse({"type": "error", "error": err.body()["error"]})
                    return
                raise RuntimeError(err.message)  # ends the body without its last chunk: the client sees an error
            if data:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) if sse else data
            if kind == "done":
                finished = True
                if sse:
                    yield _sse({"type": "speech.audio.done", "usage": payload})
                return
            kind, payload = await job.events.get()
    finally:
        if not finished:
            job.cancel()  # the client left (or the body failed): stop the model at the next chunk


async def handle(req: SpeechRequest, request, settings: Settings, sample_rate: int):
    from starlette.responses import Response, StreamingResponse

    language = check(req)
    voice_path = settings.voices.path(req.voice_name())
    check_format(req.response_format)  # a missing encoder is a 400 before any model work
    if req.speed != 1.0:
        try:
            import av.filter  # noqa: F401
        except ImportError:
            raise APIError(400, "speed other than 1.0 needs PyAV: pip install 'nightingale-mlx[server]'",
                           param="speed") from None
    loop = asyncio.get_running_loop()
    job = Job(loop, lambda tts, job: speak(tts, job, req, language, voice_path, settings))
    settings.worker.submit(job)
    first = await first_event(job, request)
    if first is None:
        return Response(status_code=499)  # nobody is listening any more
    if first[0] == "error":
        raise from_generation(first[1])
    media = "text/event-stream" if req.stream_format == "sse" else MEDIA_TYPES[req.response_format]
    return StreamingResponse(body(job, first, req, sample_rate), media_type=media, headers=STREAM_HEADERS)
