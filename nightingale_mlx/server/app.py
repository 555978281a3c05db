"""The FastAPI app: OpenAI's speech endpoints, the voice and model lists, /health and the web page."""

import asyncio
import secrets
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from ..text import SUPPORTED_LANGUAGES
from . import errors
from .errors import APIError, from_generation, one_line
from .schemas import MODEL_IDS, SpeechRequest
from .speech import Settings, handle
from .voices import VoiceStore
from .worker import Job, ModelWorker

STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")  # the page holds no secret; it asks for the key itself
MAX_JSON_BYTES = 1 << 20  # a 4096-character input is at most ~16 KB of JSON
CREATED = int(time.time())


class Guard:
    """Pure ASGI (BaseHTTPMiddleware would get between StreamingResponse and the disconnect it
    listens for): Bearer auth, and body sizes refused from Content-Length before a byte is read."""

    def __init__(self, app, api_key, max_upload_bytes: int):
        self.app, self.api_key, self.max_upload_bytes = app, api_key, max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        err = self._check(scope, headers)
        if err is not None:
            from starlette.responses import JSONResponse

            return await JSONResponse(err.body(), status_code=err.status, headers=err.headers)(scope, receive, send)
        return await self.app(scope, receive, send)

    def _check(self, scope, headers):
        if self.api_key and scope["path"] not in PUBLIC_PATHS:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
                return APIError(401, "missing or incorrect API key: send 'Authorization: Bearer KEY' with the key "
                                     "the server was started with", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            limit = self.max_upload_bytes if scope["path"] == "/v1/audio/voices" else MAX_JSON_BYTES
            length = headers.get("content-length")
            if length is None or not length.isdigit():
                return APIError(411, "send the request body with a Content-Length header", code="length_required")
            if int(length) > limit:
                return APIError(413, f"the request body is {int(length)} bytes; the limit here is {limit} bytes",
                                code="request_too_large")
        return None


def create_app(tts, *, voices_dir, api_key=None, max_queue: int = 16, max_upload_bytes: int = 20 << 20,
               first_chunk_tokens: int = 12, chunk_tokens: int = 25, max_new_tokens=None, model_name: str = "chatterbox"):
    """The server around one loaded TTS (see `nightingale serve`)."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import HTMLResponse

    voices = VoiceStore(Path(tts.model_dir) / "voices", Path(voices_dir), tts.voice_file)
    worker = ModelWorker(tts, max_queue)
    settings = Settings(worker, voices, first_chunk_tokens, chunk_tokens, max_new_tokens)
    languages = list(SUPPORTED_LANGUAGES) if tts.t3.cfg.is_multilingual else ["en"]

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, worker.close)

    app = FastAPI(title="Nightingale MLX speech server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.worker = worker
    errors.install(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "variant": tts.variant, "sample_rate": tts.sample_rate,
                "languages": languages,
                "queue": {"running": worker.running is not None, "waiting": worker.waiting, "max": worker.max_queue},
                "served": worker.served, "rejected": worker.rejected, "last_job": worker.last_job}

    def model_entry(model_id):
        return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "nightingale"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_entry(m) for m in MODEL_IDS]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id not in MODEL_IDS:
            raise APIError(404, f"model {model_id!r} not found; this server has {', '.join(MODEL_IDS)}",
                           param="model", code="model_not_found")
        return model_entry(model_id)

    @app.get("/v1/audio/models")
    async def audio_models():  # Open WebUI's shape
        return {"models": [{"id": m, "name": m} for m in MODEL_IDS]}

    @app.get("/v1/audio/voices")
    async def list_voices():
        # One reply in both shapes: Open WebUI reads "voices", OpenAI-style lists read "data".
        names = voices.names()
        return {"object": "list", "data": [{"id": n, "name": n, "object": "voice"} for n in names],
                "voices": [{"id": n, "name": n} for n in names]}

    @app.post("/v1/audio/voices", status_code=201)
    async def upload_voice(name: str = Form(...), file: UploadFile = File(...)):
        voices.check_new(name)  # a bad or taken name fails before the upload is read
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise APIError(413, f"the audio is over {max_upload_bytes} bytes", param="file", code="file_too_large")
        suffix = Path(file.filename or "").suffix.lower()
        suffix = suffix if suffix in (".wav", ".flac", ".ogg", ".mp3") else ".wav"

        def bake(tts, job):
            with tempfile.TemporaryDirectory() as tmp:  # soundfile reads a path; the name tells the format
                path = Path(tmp) / ("upload" + suffix)
                path.write_bytes(data)
                try:
                    voice = tts.prepare_voice(path)
                except ValueError as e:  # name the upload, never the server's temp path
                    raise APIError(400, one_line(e).replace(str(path), file.filename or "the upload"), param="file",
                                   code="invalid_audio") from None
            job.emit("done", voices.save(name, voice))

        job = worker.submit(Job(asyncio.get_running_loop(), bake))
        kind, payload = await job.events.get()
        if kind == "error":
            raise from_generation(payload)
        return {"id": name, "name": name, "object": "voice"}

    @app.post("/v1/audio/speech")
    async def speech(req: SpeechRequest, request: Request):
        return await handle(req, request, settings, tts.sample_rate)

    return Guard(app, api_key, max_upload_bytes)
