"""Voice conversion: bounded memory for long sources, and RTF per decoder beside the reference.

    python -m bench.vc memory [--model synthetic] [--seconds 30,180]
    python -m bench.vc rtf --size tiny|full [--variants en,turbo] [--seconds 10] [--repeats 2]

`memory`: converts a speech-like source of each length (the committed clips and pauses, tiled)
in a fresh process each and reports peak RSS (VmHWM) and the output length. Passes when the
longest's peak is within 20% of the shortest's and every output is the source's length within
40 ms (exit 1 otherwise). `rtf`: the same source converted by ChatterboxVC (reference env; the
Turbo row wraps `S3Gen(meanflow=True)`, as tests/reference/ref_vc.py) and by our
`TTS.convert_voice`, on the same random weights of the given size, in fresh processes, alternating.
RTF = conversion seconds (source tokenization, target embedding and S3Gen; model load and one
warm-up conversion excluded, on both sides) / seconds of audio.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine, run_worker

CLIPS = [ROOT / "tests/fixtures/audio/speech_long.flac", ROOT / "tests/fixtures/audio/speech_odd.flac"]
TARGET = ROOT / "tests/fixtures/audio/speech_long.flac"
PAUSE_S = 0.4


def make_source(seconds: float, path: Path) -> Path:
    """The committed clips alternated with PAUSE_S of near-silence, cut to `seconds` (16 kHz wav)."""
    import soundfile as sf

    from nightingale_mlx.vc import load_source

    clips = [load_source(c) for c in CLIPS]
    parts, n, i = [], 0, 0
    pause = np.zeros(int(PAUSE_S * 16000), np.float32)
    while n < seconds * 16000:
        parts += [clips[i % 2], pause]
        n += len(clips[i % 2]) + len(pause)
        i += 1
    sf.write(path, np.concatenate(parts)[: int(seconds * 16000)], 16000, subtype="FLOAT")
    return path


def worker(args) -> None:
    """One conversion in this process: JSON with timings, peak RSS and the length error."""
    import soundfile as sf

    from nightingale_mlx.quality import peak_rss_mb
    from nightingale_mlx.tts import TTS

    tts = TTS(Path(args.model))
    tts.convert_voice(args.source, args.target, seed=0)  # warm-up: first-call costs are not the workload
    start = time.perf_counter()
    audio = tts.convert_voice(args.source, args.target, seed=0)
    seconds = time.perf_counter() - start
    source_s = sf.info(str(args.source)).duration
    print(json.dumps({"seconds": seconds, "audio_s": audio.duration, "source_s": source_s,
                      "length_err_ms": 1000 * abs(audio.duration - source_s), "pieces": audio.info["pieces"],
                      "rtf": seconds / audio.duration, "peak_rss_mb": peak_rss_mb(),
                      "decoder": "meanflow" if tts.config.is_turbo else "cfm+cfg",
                      "n_timesteps": tts.s3gen.flow.cfg.n_timesteps}))


def memory(args) -> int:
    import tempfile

    from nightingale_mlx.cli import _model_dir

    model = _model_dir(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for s in [float(x) for x in args.seconds.split(",")]:
            src = make_source(s, Path(work) / f"src{s:g}.wav")
            rows.append({"source_s": s, **run_worker("bench.vc", ["worker", "--model", model, "--source", src,
                                                                 "--target", TARGET])})
            print(json.dumps(rows[-1]), file=sys.stderr)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    ok = ratio <= 1.2 and all(r["length_err_ms"] <= 40 for r in rows)
    print(json.dumps({"bench": "vc_memory", "model": args.model, "rows": rows, "peak_ratio_longest_shortest": ratio,
                      "ok": ok, "load_avg": os.getloadavg(), "machine": machine()}, indent=1))
    return 0 if ok else 1


def rtf(args) -> int:
    import tempfile

    from bench.compare_reference import REF_PYTHON, checkpoint
    from tests.reference import vc_harness

    rows = []
    with tempfile.TemporaryDirectory() as work:
        src = make_source(args.seconds, Path(work) / "src.wav")
        for variant in args.variants.split(","):
            ckpt = checkpoint(args.size, variant, 0)
            model = Path(work) / f"model-{variant}"
            vc_harness.convert_model(ckpt, model, variant, args.size)
            ours, ref = [], []
            for _ in range(args.repeats):
                proc = subprocess.run([REF_PYTHON, str(ROOT / "bench/ref_vc_worker.py"), str(ckpt), "--source",
                                       str(src), "--target", str(TARGET)], capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-3000:])
                ref.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                ours.append(run_worker("bench.vc", ["worker", "--model", model, "--source", src, "--target", TARGET]))
            med = lambda runs, k: float(np.median([r[k] for r in runs]))  # noqa: E731
            rows.append({"variant": variant, "decoder": ours[0]["decoder"], "steps": ours[0]["n_timesteps"],
                         "source_s": args.seconds, "rtf_ours": med(ours, "rtf"), "rtf_reference": med(ref, "rtf"),
                         "speedup": med(ref, "rtf") / med(ours, "rtf"), "peak_rss_mb_ours": med(ours, "peak_rss_mb"),
                         "peak_rss_mb_reference": med(ref, "peak_rss_mb")})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"bench": "vc_rtf", "size": args.size, "weights": "random (seed 0), original formats",
                      "rows": rows, "load_avg": os.getloadavg(), "machine": machine()}, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--model", default="synthetic")
    m.add_argument("--seconds", default="30,180")
    r = sub.add_parser("rtf")
    r.add_argument("--size", choices=["tiny", "full"], default="tiny")
    r.add_argument("--variants", default="en,turbo")
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--repeats", type=int, default=2)
    w = sub.add_parser("worker")
    w.add_argument("--model", required=True)
    w.add_argument("--source", type=Path, required=True)
    w.add_argument("--target", type=Path, required=True)
    args = p.parse_args(argv)
    if args.mode == "worker":
        return worker(args) or 0
    return {"memory": memory, "rtf": rtf}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
