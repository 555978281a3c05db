"""`nightingale serve`: an OpenAI-compatible speech server (`/v1/audio/speech`) and a web page.

Needs the `[server]` extra (FastAPI, uvicorn, python-multipart, PyAV). One model serves the
requests one at a time, in order, through a bounded queue (worker.py); each response streams the
chunks of `TTS.stream()` as one valid stream of its format (encoders.py).
"""
