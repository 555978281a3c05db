"""One model, any thread: loaded on the main thread and never used there, then driven from others.

MLX keeps streams per thread (0.31.2+): an array left lazy on one thread cannot be evaluated on
another. Each test loads its own TTS, so nothing was warmed up on the thread that loaded it.
"""

import threading

import numpy as np
import pytest

import nightingale_mlx as ng

TEXT = "Threads take turns."


def on_new_thread(fn, *args):
    """fn(*args) on a fresh thread; returns its result or raises its exception here."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=600)
    assert not t.is_alive(), "thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture()
def fresh(tts):
    """A TTS loaded on this (main) thread from the shared synthetic model dir, not used here."""
    return ng.TTS(tts.model_dir)


def test_generate_on_other_threads_one_new_thread_per_call(fresh):
    a = on_new_thread(lambda: fresh.generate(TEXT, seed=3, max_new_tokens=6).samples)
    b = on_new_thread(lambda: fresh.generate(TEXT, seed=3, max_new_tokens=6).samples)
    assert a.size > 0 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_prepare_voice_on_one_thread_generate_on_another(fresh, fixtures_dir):
    voice = on_new_thread(fresh.prepare_voice, fixtures_dir / "audio" / "speech_odd.flac")
    audio = on_new_thread(lambda: fresh.generate(TEXT, voice=voice, seed=1, max_new_tokens=6))
    assert audio.samples.size > 0 and np.isfinite(audio.samples).all()


def _chunks(it, per_chunk_thread: bool):
    """Consumes a stream iterator: every next() on a new thread, or all of it on one new thread."""
    if per_chunk_thread:
        out = []
        while True:
            chunk = on_new_thread(next, it, None)
            if chunk is None:
                return out
            out.append(chunk.samples)
    return on_new_thread(lambda: [c.samples for c in it])


def test_stream_created_on_one_thread_consumed_on_others(fresh):
    text = "Hello world, this is a streaming test. Hello again."  # two sentences: keys cross threads too
    kwargs = dict(seed=1, max_new_tokens=40, first_chunk_tokens=6, chunk_tokens=6)
    whole = _chunks(on_new_thread(lambda: fresh.stream(text, **kwargs)), per_chunk_thread=False)
    hopping = _chunks(on_new_thread(lambda: fresh.stream(text, **kwargs)), per_chunk_thread=True)
    assert len(whole) >= 3, "too few chunks to hop between threads"
    assert len(hopping) == len(whole)
    for a, b in zip(whole, hopping):
        np.testing.assert_array_equal(a, b)
