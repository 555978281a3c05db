"""Batch memory: a 5,000-word book in chapters -> one audio per chapter, RSS flat across items.

Runs `nightingale batch`'s driver in this process on a generated Markdown book (CHAPTERS chapters,
5,000 words in all) and records the resident memory after each chapter is written; the slope of a
least-squares line through those points (after WARMUP chapters) must be <= 1 MB per item.

    python -m bench.batch_memory                    # synthetic model, 20 chapters, 20 tokens per piece

The synthetic model (random weights, not speech) with a small --max-new-tokens keeps the run short;
every chapter still goes through the splitter, one generate() per piece, the encoder and the
manifest, which is what could leak.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("the river ran quietly past old stone houses where children played and lanterns swung in the evening "
         "wind while a baker counted loaves and sailors argued about weather tides maps and the price of rope").split()


def rss_mb() -> float:
    """Current resident memory (Linux /proc; elsewhere the peak, which can only be an upper bound)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def make_book(path: Path, words: int = 5000, chapters: int = 20, seed: int = 0) -> Path:
    rng = random.Random(seed)
    per = words // chapters
    out = []
    for c in range(1, chapters + 1):
        out.append(f"# Chapter {c}\n")
        sentences, n = [], 0
        while n < per:
            k = rng.randint(6, 18)
            s = " ".join(rng.choice(WORDS) for _ in range(k))
            sentences.append(s[0].upper() + s[1:] + rng.choice([".", ".", "!", "?", ","]))
            n += k
            if rng.random() < 0.2:
                sentences.append("\n\n")
        out.append(" ".join(sentences) + "\n")
    path.write_text("\n".join(out))
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--words", type=int, default=5000)
    p.add_argument("--chapters", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="chapters left out of the slope (caches filling)")
    p.add_argument("--model", default="synthetic")
    args = p.parse_args(argv)

    from nightingale_mlx.batch import read_items
    from nightingale_mlx.batch.runner import Job, local_results, run

    from bench.common import machine

    work = Path(tempfile.mkdtemp(prefix="batch-memory-"))
    book = make_book(work / "book.md", args.words, args.chapters)
    items = read_items(book)
    rss, t0 = [], time.perf_counter()

    def measured(job, tasks):
        for result in local_results(job, tasks):
            yield result
            rss.append(rss_mb())  # the driver asks for the next result once it has written this one

    job = Job(items, work / "out", "wav", {"model": args.model}, {"max_new_tokens": args.max_new_tokens})
    summary = run(job, measured)
    points = rss  # points[i]: after item i was written (the model still loaded)
    x = np.arange(len(points))[args.warmup:]
    slope = float(np.polyfit(x, np.array(points)[args.warmup:], 1)[0]) if len(x) > 1 else float("nan")
    files = sorted(p.name for p in job.out_dir.glob("*.wav"))
    report = {"words": len(book.read_text().split()), "chapters": len(items), "audio_files": len(files),
              "failed": summary["failed"], "audio_s": summary["audio_s"], "wall_s": round(time.perf_counter() - t0, 1),
              "rss_mb_per_item": [round(r, 1) for r in points], "rss_slope_mb_per_item": round(slope, 3),
              "pass": len(files) == len(items) and not summary["failed"] and slope <= 1.0,
              "max_new_tokens": args.max_new_tokens, "machine": {**machine(), "load_avg": os.getloadavg()}}
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
