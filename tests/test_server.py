"""`nightingale serve` with real clients on 127.0.0.1: the official openai package in every format
(whole and streamed), an SSE client, curl, uploads, errors, auth, the queue and disconnects.

The server runs the synthetic model (random weights, not speech) with small chunks, so a short
request still streams in several pieces; a seed makes every request's samples reproducible.
"""

import base64
import json
import shutil
import struct
import subprocess
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from httpx_sse import connect_sse

from tests.server_harness import FAST_CHUNKS, Server, decode

TEXT = "Hello there, this is a test."
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
LOSSLESS = ("flac", "wav", "pcm")
OURS = {"seed": 0, "max_new_tokens": 24}  # our extensions: reproducible and short
# Lossy codecs add priming/padding samples (mp3 ~1105+, aac 1024/frame, opus resampled to 48 kHz).
CODEC_SLACK_S = 0.12


@pytest.fixture(scope="module")
def server(cache, tmp_path_factory, tts):  # tts: builds the synthetic model once for the whole run
    voices = tmp_path_factory.mktemp("voices")
    # --max-new-tokens: requests that name no cap (the README's example) stay short on the random model.
    srv = Server(cache, tmp_path_factory.mktemp("log") / "server.log", "--voices", voices, "--queue-size", "8",
                 "--max-upload-mb", "0.5", "--max-new-tokens", "60", *FAST_CHUNKS)
    srv.voices_dir = voices
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(client):
    """The seeded request's samples, from pcm (the raw stream every other format must carry)."""
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm",
                                      extra_body=OURS).read()
    samples, _ = decode(data, "pcm")
    assert len(samples) > 2400 and np.abs(samples).max() > 0.01
    return samples


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in response.text and "File \"" not in response.text
    return body["error"]


# ------------------------------------------------------------------------------ formats, streaming

@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_client_gets_valid_audio_in_every_format(client, reference, fmt):
    whole = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt,
                                       extra_body=OURS).read()
    arrivals, parts = [], []
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="default", input=TEXT,
                                                            response_format=fmt, extra_body=OURS) as response:
        assert response.headers["content-type"].startswith({"pcm": "audio/pcm", "wav": "audio/wav"}.get(fmt, "audio/"))
        for part in response.iter_bytes():
            arrivals.append(time.perf_counter())
            parts.append(part)
    streamed = b"".join(parts)
    if fmt == "opus":  # each Ogg stream gets a random serial number; the audio must be the same
        np.testing.assert_array_equal(decode(streamed, fmt)[0], decode(whole, fmt)[0])
    else:
        assert streamed == whole  # streamed or not, one and the same stream
    assert len(parts) >= 2 and arrivals[-1] - arrivals[0] > 0.02, "the body came in one piece: not streamed"
    samples, rate = decode(whole, fmt)
    if fmt in LOSSLESS:
        assert rate == 24000
        np.testing.assert_allclose(samples, reference, atol=1 / 32767)
    else:
        assert rate in (24000, 48000)
        seconds, expected = len(samples) / rate, len(reference) / 24000
        assert expected - 0.01 <= seconds <= expected + CODEC_SLACK_S, (seconds, expected)
        assert 0.5 < np.sqrt(np.mean(samples ** 2)) / np.sqrt(np.mean(reference ** 2)) < 2


def test_wav_is_one_stream_with_a_streaming_header(client, server, reference):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav",
                                      extra_body=OURS).read()
    riff, riff_size, wave = struct.unpack("<4sI4s", data[:12])
    assert (riff, wave, riff_size) == (b"RIFF", b"WAVE", 0xFFFFFFFF)
    assert data.count(b"RIFF") == 1 and data[36:40] == b"data"  # one header, never one file per chunk
    assert len(data) == 44 + 2 * len(reference)


def test_sse_events_parsed_by_an_sse_client(server, reference):
    with httpx.Client(timeout=120) as http:
        with connect_sse(http, "POST", server.v1 + "/audio/speech",
                         json={"input": TEXT, "voice": "alloy", "response_format": "pcm", "stream_format": "sse",
                               **OURS}) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(e.data) for e in source.iter_sse()]
    types = [e["type"] for e in events]
    assert types[-1] == "speech.audio.done" and set(types[:-1]) == {"speech.audio.delta"} and len(types) >= 3
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    np.testing.assert_allclose(decode(audio, "pcm")[0], reference, atol=1 / 32767)
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_deltas_of_mp3_join_into_one_file(server, reference):
    with httpx.Client(timeout=120) as http:
        with connect_sse(http, "POST", server.v1 + "/audio/speech",
                         json={"input": TEXT, "response_format": "mp3", "stream_format": "sse", **OURS}) as source:
            events = [json.loads(e.data) for e in source.iter_sse()]
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    samples, rate = decode(mp3, "mp3")
    assert abs(len(samples) / rate - len(reference) / 24000) <= CODEC_SLACK_S


def test_curl_streams_a_wav(server, reference, tmp_path):
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test (apt-get install curl)"
    out = tmp_path / "curl.wav"
    body = json.dumps({"input": TEXT, "response_format": "wav", **OURS})
    result = subprocess.run([curl, "-sS", "--fail-with-body", "-N", "-o", str(out), "-w", "%{http_code} %{size_download}",
                             "-H", "Content-Type: application/json", "-d", body, server.v1 + "/audio/speech"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "200"
    samples, rate = sf.read(out, dtype="float32")
    assert rate == 24000
    np.testing.assert_allclose(samples, reference, atol=1 / 32767)


def test_speed_changes_the_length_not_the_stream(client, reference):
    fast = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav", speed=2.0,
                                      extra_body=OURS).read()
    samples, _ = decode(fast, "wav")
    assert abs(len(samples) - len(reference) / 2) < 0.05 * len(reference)


# ------------------------------------------------------------------------------ the other endpoints

def test_models_voices_and_health(client, server):
    assert {"tts-1", "tts-1-hd", "chatterbox"} <= {m.id for m in client.models.list()}
    assert client.models.retrieve("tts-1").id == "tts-1"
    voices = httpx.get(server.v1 + "/audio/voices").json()
    assert {"id": "default", "name": "default"} in voices["voices"]  # Open WebUI's shape
    assert "default" in [v["id"] for v in voices["data"]]
    assert {"id": "tts-1", "name": "tts-1"} in httpx.get(server.v1 + "/audio/models").json()["models"]
    health = server.health()
    assert health["status"] == "ok" and health["sample_rate"] == 24000 and health["queue"]["max"] == 8


def test_voice_upload_bakes_a_voice_that_speaks(server, client, fixtures_dir, reference, tmp_path):
    samples, sr = sf.read(fixtures_dir / "audio" / "speech_odd.flac")
    sf.write(tmp_path / "me.wav", samples, sr)
    url = server.v1 + "/audio/voices"
    with open(tmp_path / "me.wav", "rb") as f:
        r = httpx.post(url, data={"name": "me"}, files={"file": ("me.wav", f, "audio/wav")}, timeout=120)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "me" and (server.voices_dir / "me.safetensors").is_file()
    assert "me" in [v["id"] for v in httpx.get(url).json()["voices"]]
    mine = client.audio.speech.create(model="tts-1", voice="me", input=TEXT, response_format="pcm",
                                      extra_body=OURS).read()
    assert len(mine) > 0 and not np.array_equal(decode(mine, "pcm")[0][: len(reference)], reference)
    with open(tmp_path / "me.wav", "rb") as f:  # a name is never replaced
        again = httpx.post(url, data={"name": "me"}, files={"file": ("me.wav", f, "audio/wav")}, timeout=120)
    assert again.status_code == 409 and "already exists" in error_of(again)["message"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "x" * 65, "é"])
def test_voice_names_cannot_reach_the_file_system(server, tmp_path, name):
    r = httpx.post(server.v1 + "/audio/voices", data={"name": name},
                   files={"file": ("x.wav", b"RIFF0000WAVE", "audio/wav")}, timeout=60)
    assert r.status_code == 400 and error_of(r)["param"] == "name"
    speak = httpx.post(server.v1 + "/audio/speech", json={"input": "Hi.", "voice": name}, timeout=60)
    assert speak.status_code == 400 and error_of(speak)["param"] == "voice"
    assert not list(server.voices_dir.parent.glob("evil*"))


def test_uploads_that_are_not_audio_or_too_big_are_refused(server):
    url = server.v1 + "/audio/voices"
    r = httpx.post(url, data={"name": "junk"}, files={"file": ("junk.wav", b"not audio at all" * 100, "audio/wav")},
                   timeout=120)
    assert r.status_code == 400
    message = error_of(r)["message"]
    assert "junk.wav" in message and "/tmp" not in message  # names the upload, never a server path
    big = httpx.post(url, data={"name": "big"}, files={"file": ("big.wav", b"\0" * (600 << 10), "audio/wav")}, timeout=60)
    assert big.status_code == 413 and "limit" in error_of(big)["message"]
    assert not (server.voices_dir / "junk.safetensors").exists() and not (server.voices_dir / "big.safetensors").exists()


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("body, status, param, words", [
    ({"input": "Hi.", "voice": "nobody"}, 404, "voice", "not found"),
    ({"input": "Hi.", "model": "whisper-1"}, 404, "model", "not found"),
    ({"input": "x" * 4097}, 400, "input", "4096"),
    ({"input": "   "}, 400, "input", "empty"),
    ({"input": "Hi.", "temperature": "hot"}, 400, "temperature", "number"),
    ({"input": "Hi.", "speed": 9}, 400, "speed", "4"),
    ({"input": "Hi.", "response_format": "ogg"}, 400, "response_format", "mp3"),
    ({"input": "Hi.", "language": "xx"}, 400, "language", "not supported"),
    ({"input": "Hi.", "top_p": 0}, 400, "top_p", "0"),
    ({"voice": "alloy"}, 400, "input", "required"),
])
def test_errors_are_openai_shaped_with_a_clear_message(server, body, status, param, words):
    r = httpx.post(server.v1 + "/audio/speech", json=body, timeout=60)
    err = error_of(r)
    assert r.status_code == status and err["param"] == param and words in err["message"], err


def test_the_openai_client_sees_the_message(client):
    with pytest.raises(openai.NotFoundError, match="voice 'nobody' not found"):
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
    with pytest.raises(openai.BadRequestError, match="at most 4096"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)


def test_protocol_errors_are_openai_shaped(server):
    bad_json = httpx.post(server.v1 + "/audio/speech", content=b"{bad", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in error_of(bad_json)["message"]
    assert httpx.get(server.v1 + "/nope").status_code == 404 and error_of(httpx.get(server.v1 + "/nope"))
    wrong = httpx.get(server.v1 + "/audio/speech")
    assert wrong.status_code == 405 and error_of(wrong)
    huge = httpx.post(server.v1 + "/audio/speech", content=b" " * (2 << 20), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and error_of(huge)


def test_a_failure_on_the_model_worker_is_a_clear_error(server, client):
    (server.voices_dir / "broken.safetensors").write_bytes(b"not a voice")  # found by name, fails to load
    r = httpx.post(server.v1 + "/audio/speech", json={"input": "Hi.", "voice": "broken", **OURS}, timeout=60)
    err = error_of(r)
    assert r.status_code == 500 and "'broken' cannot be loaded" in err["message"], err
    assert str(server.voices_dir) not in err["message"]
    assert client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="wav",
                                      extra_body=OURS).read()[:4] == b"RIFF"  # the worker lives on


# ------------------------------------------------------------------------------ disconnects

def test_a_client_that_leaves_mid_stream_frees_the_model_within_one_chunk(server):
    server.wait_idle()
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", server.v1 + "/audio/speech",
                         json={"input": TEXT, "response_format": "pcm", "seed": 1, "max_new_tokens": 60}) as r:
            chunks = r.iter_raw()
            next(chunks)  # the first chunk has arrived: the model is mid-utterance
            left = time.perf_counter()
            chunks.close()  # closes the connection: the client is gone
    while server.health()["queue"]["running"]:
        time.sleep(0.005)
    freed = time.perf_counter() - left
    job = server.health()["last_job"]
    assert job["cancelled"] and job["chunks_after_cancel"] <= 1, job
    # 60 tokens at 6 per chunk would be ~10 chunks; it stopped right after the client left.
    assert job["chunks"] <= 4, job
    # The model was free at most one chunk (the one in progress) after the server saw the client go.
    assert job["release_after_cancel_s"] <= job["max_chunk_s"] + 0.05, job
    assert freed <= job["max_chunk_s"] + 0.5, (freed, job)
    print(f"disconnect: model free {freed * 1000:.0f} ms after the client closed "
          f"({job['release_after_cancel_s'] * 1000:.0f} ms after the server saw it; a chunk took "
          f"{job['mean_chunk_s'] * 1000:.0f} ms on average, {job['max_chunk_s'] * 1000:.0f} ms at most)")


# ------------------------------------------------------------------------------ auth and the queue

@pytest.fixture(scope="module")
def guarded(cache, tmp_path_factory, tts):
    """A server with a key (from the environment) and room for one waiting request."""
    srv = Server(cache, tmp_path_factory.mktemp("log") / "guarded.log", "--queue-size", "1", *FAST_CHUNKS,
                 env={"NIGHTINGALE_API_KEY": "s3cret"})
    yield srv
    srv.stop()


def test_api_key_is_required_when_set(guarded):
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(base_url=guarded.v1, api_key="wrong", max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input="Hi.")
    assert httpx.get(guarded.v1 + "/audio/voices").status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200  # the page and /health stay open
    assert httpx.get(guarded.url + "/").status_code == 200
    ok = openai.OpenAI(base_url=guarded.v1, api_key="s3cret", max_retries=0).audio.speech.create(
        model="tts-1", voice="alloy", input="Hi.", response_format="wav", extra_body=OURS).read()
    assert decode(ok, "wav")[1] == 24000


def test_a_full_queue_answers_429_with_retry_after(guarded):
    auth = {"Authorization": "Bearer s3cret"}
    long = {"input": TEXT, "response_format": "pcm", "max_new_tokens": 300, "seed": 2}  # ~28 chunks (the text caps it)
    waiting_result = {}

    def wait_in_queue():
        waiting_result["r"] = httpx.post(guarded.v1 + "/audio/speech", json={**long, "max_new_tokens": 4},
                                         headers=auth, timeout=120)

    waiter = threading.Thread(target=wait_in_queue)
    with httpx.Client(timeout=120, headers=auth) as http:
        with http.stream("POST", guarded.v1 + "/audio/speech", json=long) as running:
            body = running.iter_raw()  # kept: a dropped iterator closes the connection (a disconnect)
            next(body)  # the model is busy with this one
            waiter.start()
            deadline = time.monotonic() + 30
            while guarded.health()["queue"]["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            full = http.post(guarded.v1 + "/audio/speech", json=long)
            assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
            assert "busy" in error_of(full)["message"]
            assert guarded.health()["queue"]["running"]
            body.close()
        # Leaving the long one frees the model for the queued request, served in its turn.
    waiter.join(timeout=120)
    assert waiting_result["r"].status_code == 200 and waiting_result["r"].content
    assert guarded.health()["rejected"] >= 1


# ------------------------------------------------------------------------------ load

LOAD_TEXTS = ["Hi there.", "One more time.", "Good morning."]


def run_clients(server, clients: int, per_client: int, expected: dict, offset: int = 0) -> list:
    """CLIENTS threads, each with its own openai client, sending PER_CLIENT requests back to back;
    every answer must be the exact audio that request gets alone."""
    failures, lock = [], threading.Lock()

    def one_client(k):
        client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=600)
        for i in range(per_client):
            key = (offset + k + i) % len(LOAD_TEXTS)
            try:
                got = client.audio.speech.create(model="tts-1", voice="alloy", input=LOAD_TEXTS[key],
                                                 response_format="wav", extra_body={"seed": key, "max_new_tokens": 4})
                ok = got.read() == expected[key]
            except Exception as e:  # noqa: BLE001  (counted, then reported below)
                ok = f"{type(e).__name__}: {e}"
            if ok is not True:
                with lock:
                    failures.append((k, i, ok))

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def load_test(server, client, clients: int, first: int, rest: int):
    """CLIENTS x FIRST requests, RSS, then CLIENTS x REST more, RSS: all correct, memory flat."""
    expected = {key: client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav",
                                                extra_body={"seed": key, "max_new_tokens": 4}).read()
                for key, text in enumerate(LOAD_TEXTS)}
    assert len(set(expected.values())) == len(LOAD_TEXTS)
    served = server.wait_idle()["served"]
    t0 = time.perf_counter()
    assert run_clients(server, clients, first, expected) == []
    early = server.rss_mb()
    assert run_clients(server, clients, rest, expected, offset=1) == []
    late = server.rss_mb()
    health = server.wait_idle()
    total = clients * (first + rest)
    assert health["served"] - served == total and health["rejected"] == 0
    print(f"load: {clients} clients x {first + rest} requests in {time.perf_counter() - t0:.1f} s; "
          f"RSS {early:.1f} MiB after {clients * first}, {late:.1f} MiB after {total} ({(late / early - 1) * 100:+.2f}%)")
    assert late <= early * 1.05, (early, late)


def test_load_8_clients_all_correct_memory_flat(server, client):
    load_test(server, client, clients=8, first=1, rest=3)  # 8 then 32 requests: the CI-sized run


@pytest.mark.slow
def test_load_8_clients_x_25_requests(server, client):
    load_test(server, client, clients=8, first=3, rest=22)  # RSS after 24 and after 200 requests


def test_the_readme_client_example_runs(server, tmp_path, monkeypatch):
    from tests.test_readme import python_blocks

    blocks = python_blocks(server=True)
    assert len(blocks) == 1 and "http://127.0.0.1:8000/v1" in blocks[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0].replace("http://127.0.0.1:8000/v1", server.v1), "README.md", "exec"), {})
    samples, rate = decode((tmp_path / "hello-server.mp3").read_bytes(), "mp3")
    assert rate == 24000 and len(samples) > 0


# ------------------------------------------------------------------------------ set-up errors (no server)

def test_a_missing_encoder_is_a_400_that_names_the_fix(monkeypatch):
    import sys

    import av

    from nightingale_mlx.server.encoders import check_format
    from nightingale_mlx.server.errors import APIError

    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"aac"})
    with pytest.raises(APIError) as e:
        check_format("aac")
    assert e.value.status == 400 and "aac encoder" in e.value.message and e.value.param == "response_format"
    check_format("mp3")  # the others are still there
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed at all
    with pytest.raises(APIError, match=r"pip install 'nightingale-mlx\[server\]'"):
        check_format("opus")
    check_format("wav"), check_format("pcm")  # need no library


def serve_error(capsys, *argv):
    from nightingale_mlx.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "/no/such/model", *map(str, argv)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("nightingale: error: ") and err.count("\n") == 1, err
    return err


def test_serve_checks_its_set_up_before_loading_the_model(capsys, monkeypatch, tmp_path):
    import importlib.util
    import socket

    assert "--voices" in serve_error(capsys, "--voices", tmp_path / "missing")
    assert "--queue-size" in serve_error(capsys, "--queue-size", 0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert "cannot listen on 127.0.0.1" in serve_error(capsys, "--port", busy.getsockname()[1])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert "pip install 'nightingale-mlx[server]'" in serve_error(capsys)


def test_the_server_speaks_with_the_voices_it_warmed_up(tts, tmp_path):
    """The store loads voices through TTS.voice_file, so the built-in voice a request names is the
    object `serve`'s warm-up stream used, and its stored T3 prefix is reused by the first request."""
    from nightingale_mlx.server.voices import VoiceStore

    store = VoiceStore(tts.model_dir / "voices", tmp_path, tts.voice_file)
    for _ in tts.stream("Hello.", max_new_tokens=4, seed=0):  # serve()'s warm-up
        pass
    voice = store.load(store.path("alloy"))
    assert voice is tts.resolve_voice(None)
    assert any(c[0] is voice and c[2] for c in tts._conds.values())
