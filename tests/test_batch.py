"""nightingale batch: inputs, long-form pieces, resume after SIGKILL, errors per item, Ray.

The model is the synthetic one (not speech): these tests check the bookkeeping and determinism.
bench/batch_resume.py runs the issue's 200-item, 5-kill check; here a 6-item job is killed once.
"""

import json
import os
import random
import subprocess

import numpy as np
import pytest

from bench.batch_resume import command, compare, make_items, run_with_kills
from nightingale_mlx.batch import InputError, piece_seed, plan_pieces, read_items
from nightingale_mlx.batch.longform import GUARD_LIMIT_S, MAX_PIECE_SECONDS, PARAGRAPH_PAUSE_S, speak
from nightingale_mlx.batch.manifest import Manifest
from nightingale_mlx.batch.runner import Job, Synthesizer, encode, run
from nightingale_mlx.config import SPEECH_TOKENS_PER_SECOND
from nightingale_mlx.sampling import SamplingParams
from nightingale_mlx.text import estimate_seconds
from nightingale_mlx.tts import SENTENCE_PAUSE_S, TOKEN_CAP_RATIO, TOKEN_CAP_SLACK_S

FAST = {"max_new_tokens": 6}  # a few speech tokens per piece: the synthetic model never stops on its own


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_items_and_per_item_errors(tmp_path):
    items = read_items(_jsonl(tmp_path / "a.jsonl", [
        {"id": "a", "text": "Hi.", "voice": "v.wav", "seed": 3, "temperature": 0.5},
        {"id": 7, "text": "Seven."},
        "{not json",
        {"id": "b", "text": "x", "colour": "red"},
        {"id": "c", "text": "x", "seed": 1.5},
        {"text": "no id"},
        "",
    ]))
    assert [i.id for i in items] == ["a", "7", "line-3", "b", "c", "line-6"]
    assert items[0].options == {"voice": "v.wav", "seed": 3, "temperature": 0.5} and items[0].error is None
    assert "not JSON" in items[2].error and "line 3" in items[2].error
    assert "unknown field(s) colour" in items[3].error
    assert "'seed' must be an integer" in items[4].error
    assert "'id'" in items[5].error


def test_input_problems_stop_the_job_before_work(tmp_path):
    with pytest.raises(InputError, match="would write the same file"):
        read_items(_jsonl(tmp_path / "d.jsonl", [{"id": "a/b", "text": "x"}, {"id": "a_b", "text": "y"}]))
    with pytest.raises(InputError, match="unsupported input"):
        read_items(tmp_path / "x.csv")
    with pytest.raises(InputError, match="no such file"):
        read_items(tmp_path / "missing.jsonl")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8"):
        read_items(tmp_path / "bin.txt")


def test_markdown_and_text_chapters(tmp_path):
    md = tmp_path / "book.md"
    md.write_text("A foreword line.\n\n# The *First* Chapter\n\nIt was [a dark](http://x) night.\n\n"
                  "```\ncode()\n```\n- a list item\n\n## Second\nShort.\n")
    items = read_items(md)
    assert [i.id for i in items] == ["000-front", "001-the-first-chapter", "002-second"]
    assert items[1].text == "The First Chapter.\n\nIt was a dark night.\n\na list item"
    assert items[0].text == "A foreword line."
    txt = tmp_path / "book.txt"
    txt.write_text("CHAPTER 1\nOne.\n\nChapter Two: The Road\nTwo.\n")
    assert [(i.id, i.text) for i in read_items(txt)] == [("001-chapter-1", "CHAPTER 1.\n\nOne."),
                                                       ("002-chapter-two-the-road", "Chapter Two: The Road.\n\nTwo.")]


def test_pieces_stay_under_the_guard_and_pause_by_punctuation():
    # The guard's cap reaches the 1000-token ceiling exactly at GUARD_LIMIT_S; pieces stay under it.
    cap = SPEECH_TOKENS_PER_SECOND * (TOKEN_CAP_RATIO * GUARD_LIMIT_S + TOKEN_CAP_SLACK_S)
    assert cap == pytest.approx(SamplingParams.max_new_tokens) and MAX_PIECE_SECONDS < GUARD_LIMIT_S
    sentence = "The quick brown fox, who was rather tired of jumping, sat down by the river and thought. "
    text = sentence * 12 + "\n\n" + "One long breathless clause " * 20 + "\n\nThe end."
    pieces = plan_pieces(text)
    assert all(estimate_seconds(p.text) <= MAX_PIECE_SECONDS for p in pieces)
    assert " ".join(p.text for p in pieces).split() == text.split()  # nothing lost or repeated
    first_para = [p for p in pieces if "fox" in p.text]
    assert [p.pause_s for p in first_para[:-1]] == [SENTENCE_PAUSE_S] * (len(first_para) - 1)
    assert first_para[-1].pause_s == PARAGRAPH_PAUSE_S
    assert pieces[-1].text == "The end." and pieces[-1].pause_s == 0.0
    assert plan_pieces("  \n\n ") == []


def test_piece_seeds_are_deterministic_and_distinct():
    seeds = [piece_seed(42, i) for i in range(100)]
    assert seeds == [piece_seed(42, i) for i in range(100)]
    assert len(set(seeds) | {piece_seed(43, 0)}) == 101 and all(0 <= s < 2**63 for s in seeds)


def test_speak_is_generate_per_piece_with_pauses(tts):
    text = "First sentence here.\n\nA new paragraph starts."
    samples, info = speak(tts, text, "en", None, seed=5, **FAST)
    pieces = plan_pieces(text, "en")
    assert info["pieces"] == len(pieces) == 2 and pieces[0].pause_s == PARAGRAPH_PAUSE_S
    expect = []
    for i, piece in enumerate(pieces):
        expect += [tts.generate(piece.text, seed=piece_seed(5, i), watermark=False, **FAST).samples,
                   np.zeros(int(round(piece.pause_s * tts.sample_rate)), np.float32)]
    np.testing.assert_array_equal(samples, tts.finish(np.concatenate(expect)))  # marked once, as a whole
    plain, _ = speak(tts, text, "en", None, seed=5, watermark=False, **FAST)
    np.testing.assert_array_equal(plain, np.concatenate(expect))


def test_encoded_formats_are_deterministic(tmp_path):
    from nightingale_mlx.audio.io import save_audio

    sr = 24000
    samples = (0.3 * np.sin(np.arange(sr) * 2 * np.pi * 220 / sr)).astype(np.float32)
    for fmt in ("wav", "flac", "mp3"):
        data = encode(samples, sr, fmt)
        assert data == encode(samples, sr, fmt)
        if fmt != "mp3":  # the very bytes `nightingale speak` writes
            assert data == save_audio(tmp_path / f"x.{fmt}", samples, sr).read_bytes()
    import io

    import av

    with av.open(io.BytesIO(encode(samples, sr, "mp3"))) as f:
        decoded = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)])
    assert abs(len(decoded) - sr) < 0.1 * sr  # the encoder's padding aside, one second


def _job(tts, tmp_path, rows, **kw):
    items = read_items(_jsonl(tmp_path / "items.jsonl", rows))
    synth = Synthesizer({"model": "synthetic"}, tts=tts)
    return Job(items, tmp_path / "out", **kw), (lambda job, tasks: map(synth, tasks))


def test_errors_are_recorded_and_the_rest_resumes(tts, tmp_path):
    rows = [{"id": "ok", "text": "Fine words.", **FAST}, {"id": "empty", "text": "  "},
            {"id": "voice", "text": "Hi there.", "voice": str(tmp_path / "nope.wav")},
            {"id": "lang", "text": "Hi there.", "language": "xx", **FAST}]
    job, executor = _job(tts, tmp_path, rows)
    summary = run(job, executor)
    assert (summary["done"], summary["failed"], summary["failed_ids"]) == (1, 3, ["empty", "voice", "lang"])
    entries = Manifest(job.out_dir).entries()
    assert "text is empty" in entries["empty"]["error"] and "no such voice file" in entries["voice"]["error"]
    assert entries["ok"]["status"] == "ok" and (job.out_dir / "ok.wav").is_file()
    assert entries["ok"]["settings"]["sampling"]["max_new_tokens"] == 6
    ok_bytes = (job.out_dir / "ok.wav").read_bytes()

    again = run(job, executor)  # the failures are tried again, the finished item is not
    assert (again["skipped"], again["failed"]) == (1, 3)
    assert len((job.out_dir / "manifest.jsonl").read_text().splitlines()) == 4

    (job.out_dir / "ok.wav").write_bytes(ok_bytes[:-2])  # a damaged file is made again
    with open(job.out_dir / "manifest.jsonl", "a") as f:
        f.write('{"id": "ok", "sta')  # a torn line from a kill is dropped
    (job.out_dir / ".partial-ok.wav").write_bytes(b"junk")
    assert run(job, executor)["done"] == 1
    assert (job.out_dir / "ok.wav").read_bytes() == ok_bytes
    assert not [p for p in job.out_dir.iterdir() if p.name.startswith(".")]

    job.defaults = {"seed": 99}  # another seed: another request, made again
    assert run(job, executor)["done"] == 1 and (job.out_dir / "ok.wav").read_bytes() != ok_bytes


def test_cli_exit_code_says_items_failed(tmp_path, cache):
    from tests.test_tts import run_cli

    items = _jsonl(tmp_path / "bad.jsonl", ["{oops", {"id": "x", "text": "y", "speed": 2}])
    r = run_cli(["batch", str(items), "--out", str(tmp_path / "o"), "--model", "synthetic", "--json"], cache)
    assert r.returncode == 1 and "2 of 2 items failed" in r.stderr
    assert json.loads(r.stdout)["failed_ids"] == ["line-1", "x"]


IDS = [f"utt{i:04d}" for i in range(6)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache, tts):
    """A 6-item job run once without interruption: (items, output dir)."""
    work = tmp_path_factory.mktemp("batch")
    items = make_items(work / "items.jsonl", len(IDS), max_new_tokens=6)
    subprocess.run(command(items, work / "ref"), check=True, capture_output=True,
                   env={**os.environ, "NIGHTINGALE_CACHE": str(cache)})
    return items, work / "ref"


def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path, cache, uninterrupted, monkeypatch):
    monkeypatch.setenv("NIGHTINGALE_CACHE", str(cache))
    items, ref = uninterrupted
    landed = run_with_kills(items, tmp_path / "killed", 1, random.Random(0), max_wait_s=0.3)
    assert landed[0] < len(IDS)  # the kill landed before the end
    diff = compare(ref, tmp_path / "killed", IDS)
    assert not any(diff.values()), diff


def test_ray_run_equals_the_local_run(tmp_path, cache, uninterrupted, monkeypatch):
    """Two Ray actors on a local instance: the same files and manifest (timings aside)."""
    monkeypatch.setenv("NIGHTINGALE_CACHE", str(cache))
    items, ref = uninterrupted
    r = subprocess.run(command(items, tmp_path / "ray", ["--ray", "--workers", "2"]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    diff = compare(ref, tmp_path / "ray", IDS)
    assert not any(diff.values()), diff


def test_a_model_that_cannot_load_ends_the_job(tmp_path):
    items = read_items(_jsonl(tmp_path / "i.jsonl", [{"id": "a", "text": "Hello."}, {"id": "b", "text": "Hi."}]))
    job = Job(items, tmp_path / "out", model={"model": str(tmp_path / "no-model")})
    with pytest.raises(Exception, match="no-model"):
        run(job)
    assert not (tmp_path / "out" / "manifest.jsonl").read_text()  # nothing recorded as done or failed
