"""The batch driver: plans the job, skips what is done, writes each result and its manifest line.

Speaking happens in an executor: `local_results` in this process, or ray_backend's actors. Both
call `synthesize` with one model per process and hand back encoded bytes; only this driver writes
files and the manifest, so the guarantees (temp + rename, resume, one line per item) are the same.
"""

import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .. import __version__
from ..sampling import SamplingParams
from .inputs import SAMPLING_FIELDS, Item, default_seed
from .longform import MAX_PIECE_SECONDS, speak
from .manifest import Manifest, write_atomic

FORMATS = ("wav", "flac", "mp3")
VOICE_CACHE = 8  # resolved voices kept per worker (cloning a wav again per item would be slow)


class BatchError(RuntimeError):
    """Some items failed (each is recorded in the manifest); the exit code says so."""


@dataclass
class Job:
    items: List[Item]
    out_dir: Path
    fmt: str = "wav"
    model: dict = field(default_factory=lambda: {"model": "synthetic"})  # loader.load's arguments
    defaults: dict = field(default_factory=dict)  # job-wide voice, language, seed, sampling
    max_piece_s: float = MAX_PIECE_SECONDS
    watermark: bool = True  # Perth's mark on every item, as generate() does


def check_format(fmt: str) -> None:
    """mp3 needs PyAV's libmp3lame; said before any work."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: unsupported; use {', '.join(FORMATS)}")
    if fmt == "mp3":
        try:
            import av
        except ImportError:
            raise ValueError("--format mp3 needs PyAV: pip install 'nightingale-mlx[server]' (or use wav/flac)") from None
        if "libmp3lame" not in av.codecs_available:
            raise ValueError("--format mp3: this PyAV build has no libmp3lame encoder; use wav or flac")


def encode(samples, sample_rate: int, fmt: str) -> bytes:
    """Float samples -> a whole file's bytes: 16-bit wav/flac as `speak` writes them, mp3 through
    the server's PyAV encoder. The same samples always give the same bytes."""
    if fmt == "mp3":
        from ..server.encoders import AvEncoder

        enc = AvEncoder("mp3", sample_rate)
        return enc.encode(samples) + enc.finish()
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, samples, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def task_for(item: Item, job: Job) -> dict:
    """What a worker needs for ITEM, and `request`: everything that decides its audio (resume key)."""
    import hashlib

    opts = {**job.defaults, **item.options}
    seed, voice = opts.get("seed"), opts.get("voice")
    if voice is not None and Path(voice).expanduser().exists():  # a file: by its absolute path (Ray workers' cwd)
        voice = str(Path(voice).expanduser().resolve())
    request = {
        "text_sha256": hashlib.sha256(item.text.encode()).hexdigest(),
        "language": opts.get("language") or "en",
        "voice": voice,
        "seed": default_seed(item.id) if seed is None else seed,
        "options": {k: opts[k] for k in SAMPLING_FIELDS if opts.get(k) is not None},
        "model": job.model,
        "format": job.fmt,
        "max_piece_s": job.max_piece_s,
        "watermark": job.watermark,
    }
    return {"id": item.id, "text": item.text, "file": f"{item.stem}.{job.fmt}", "error": item.error,
            "request": request}


class Synthesizer:
    """One model per process, and the voices it resolved: task -> result (bytes or an error)."""

    def __init__(self, model: dict, tts=None):
        self.model = model
        self.tts = tts  # loaded on the first item that needs it
        self.voices: Dict[Optional[str], object] = {}

    def __call__(self, task: dict) -> dict:
        if task["error"]:
            return {"id": task["id"], "error": task["error"]}
        req = task["request"]
        if self.tts is None:  # a model that cannot load ends the job (one line), not every item
            from ..loader import load

            self.tts = load(**self.model)
        try:
            voice = self._voice(req["voice"])
            options = dict(req["options"])
            sampling = {k: options[k] for k in SAMPLING_FIELDS[1:-1] if k in options}
            resolved = {**self.tts.sampling_params(**sampling).__dict__, "exaggeration": 0.5,
                        "max_new_tokens": min(options.get("max_new_tokens", 10**9), SamplingParams.max_new_tokens)}
            resolved.update({k: options[k] for k in ("exaggeration",) if k in options})
            samples, info = speak(self.tts, task["text"], req["language"], voice, req["seed"], req["max_piece_s"],
                                  req.get("watermark", True), **options)
            data = encode(samples, self.tts.sample_rate, req["format"])
        except Exception as e:  # one item's failure is its manifest line, not the job's end
            return {"id": task["id"], "error": " ".join(str(e).split()) or type(e).__name__}
        return {"id": task["id"], "data": data, "sample_rate": self.tts.sample_rate, "samples": len(samples),
                "info": info, "sampling": resolved}

    def run(self, task: dict) -> dict:
        """The same, under a plain name for Ray's actor handles."""
        return self(task)

    def _voice(self, name):
        if name not in self.voices:
            if len(self.voices) >= VOICE_CACHE:
                self.voices.pop(next(iter(self.voices)))
            self.voices[name] = self.tts.resolve_voice(name)
        return self.voices[name]


def local_results(job: Job, tasks: List[dict]) -> Iterator[dict]:
    synth = Synthesizer(job.model)
    for task in tasks:
        yield synth(task)


def entry_for(task: dict, result: dict, out_dir: Path) -> dict:
    settings = {"request": task["request"], "nightingale_mlx": __version__}
    if "error" in result:
        return {"id": task["id"], "status": "error", "error": result["error"], "settings": settings}
    info = result["info"]
    from ..outputs import file_sha256

    path = out_dir / task["file"]
    return {"id": task["id"], "status": "ok", "file": task["file"], "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "duration_s": round(result["samples"] / result["sample_rate"], 4),
            "samples": result["samples"], "sample_rate": result["sample_rate"], "pieces": info["pieces"],
            "sentences": info["sentences"], "tokens": info["tokens"],
            "timings": {k: round(info[k], 3) for k in ("t3_s", "s3gen_s", "wall_s", "rtf")},
            "settings": {**settings, "sampling": result["sampling"]}}


def run(job: Job, executor=local_results, show: bool = False) -> dict:
    """Runs JOB; returns the summary. Items already done (manifest + file) are skipped."""
    t0 = time.perf_counter()
    job.out_dir.mkdir(exist_ok=True)
    manifest = Manifest(job.out_dir)
    manifest.lock()
    try:
        return _run(job, executor, show, manifest, t0)
    finally:
        manifest.unlock()


def _run(job: Job, executor, show: bool, manifest: Manifest, t0: float) -> dict:
    from ..progress import BatchProgress

    tasks = [task_for(item, job) for item in job.items]
    done = manifest.start({t["id"]: t["request"] for t in tasks})
    todo = [t for t in tasks if t["id"] not in done]
    by_id, chars = {t["id"]: t for t in todo}, {t["id"]: len(t["text"]) for t in todo}
    bar = BatchProgress(show, total=len(tasks), skipped=len(done), chars=sum(chars.values()))
    failed, audio_s = [], 0.0
    try:
        for result in executor(job, todo):
            task = by_id[result["id"]]
            if "data" in result:
                write_atomic(job.out_dir / task["file"], result["data"])
            entry = entry_for(task, result, job.out_dir)
            manifest.append(entry)
            if entry["status"] == "error":
                failed.append(task["id"])
                bar.note(f"{task['id']}: {entry['error']}")
            audio_s += entry.get("duration_s", 0.0)
            bar.item(chars[task["id"]], entry.get("duration_s", 0.0))
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    return {"items": len(tasks), "done": len(todo) - len(failed), "skipped": len(done), "failed": len(failed),
            "failed_ids": failed, "audio_s": round(audio_s, 3), "wall_s": round(wall, 3),
            "rtf": round(wall / audio_s, 3) if audio_s else None, "manifest": str(manifest.path)}


def report(summary: dict, out=sys.stderr) -> None:
    print(f"nightingale: batch: {summary['done']} done, {summary['skipped']} already done, {summary['failed']} failed "
          f"of {summary['items']}; {summary['audio_s'] / 3600:.2f} h ({summary['audio_s']:.0f} s) of audio in "
          f"{summary['wall_s']:.0f} s; "
          f"manifest {summary['manifest']}", file=out)
