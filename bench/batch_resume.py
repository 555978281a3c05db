"""Batch resume check: a JSONL job killed with SIGKILL at random points and rerun must end equal
to an uninterrupted run (same files, same bytes and samples, one manifest line per item, no temp
files). With --ray, the same job on a local Ray instance (2 workers) must match it too.

    python -m bench.batch_resume --items 200 --kills 5          # the issue's check (~10 min on 2 cores)
    python -m bench.batch_resume --items 6 --kills 1 --ray      # Ray too

Uses the synthetic model (a tiny random model: timing and audio are not speech) and items with
a small max_new_tokens, so the check measures the bookkeeping, not the model.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

TIMING_KEYS = ("timings",)


def make_items(path: Path, n: int, max_new_tokens: int = 8) -> Path:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()
    with open(path, "w") as f:
        for i in range(n):
            text = f"Item {i}: {' '.join(words[: 2 + i % 6])}. And then {words[i % 10]}!"
            f.write(json.dumps({"id": f"utt{i:04d}", "text": text, "max_new_tokens": max_new_tokens,
                                **({"seed": i} if i % 3 else {})}) + "\n")
    return path


def command(items: Path, out: Path, extra=()) -> list:
    return [sys.executable, "-m", "nightingale_mlx", "batch", str(items), "--out", str(out), "--model", "synthetic",
            "--quiet", *extra]


def manifest_lines(out: Path) -> int:
    try:
        return (out / "manifest.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def run_with_kills(items: Path, out: Path, kills: int, rng: random.Random, extra=(), max_wait_s: float = 3.0) -> list:
    """Starts the job KILLS times and kills each start (SIGKILL) at a random point: after a random
    number of finished items (spread over the whole job), plus a random delay that lands anywhere
    in an item, a rename or a manifest write. Then runs it to the end. Returns the manifest's line
    count at each kill."""
    n = sum(1 for line in items.read_text().splitlines() if line.strip())
    targets = sorted(rng.sample(range(1, n), min(kills, n - 1)))
    landed = []
    for target in targets:
        proc = subprocess.Popen(command(items, out, extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = manifest_lines(out)
        while proc.poll() is None and manifest_lines(out) < max(target, start + 1):  # progress first
            time.sleep(0.02)
        time.sleep(rng.uniform(0, max_wait_s))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        landed.append(manifest_lines(out))
    final = subprocess.run(command(items, out, extra), capture_output=True, text=True)
    if final.returncode != 0:
        raise RuntimeError(f"final rerun failed ({final.returncode}): {final.stderr[-2000:]}")
    return landed


def _entries(out: Path):
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return lines, {e["id"]: {k: v for k, v in e.items() if k not in TIMING_KEYS} for e in lines}


def compare(ref: Path, test: Path, ids) -> dict:
    """Differences of TEST from REF; every list empty means equal."""
    ref_lines, ref_entries = _entries(ref)
    lines, entries = _entries(test)
    counts = {}
    for e in lines:
        counts[e["id"]] = counts.get(e["id"], 0) + 1
    files = lambda d: sorted(p.name for p in d.iterdir() if p.name != "manifest.jsonl")  # noqa: E731
    differing_bytes, differing_samples = [], []
    for name in files(ref):
        if (test / name).exists() and (ref / name).read_bytes() != (test / name).read_bytes():
            differing_bytes.append(name)
            a, _ = soundfile.read(ref / name)
            b, _ = soundfile.read(test / name)
            if a.shape != b.shape or not np.array_equal(a, b):
                differing_samples.append(name)
    return {
        "missing_items": sorted(set(ids) - set(entries)),
        "duplicated_items": sorted(i for i, c in counts.items() if c > 1),
        "not_ok": sorted(i for i, e in entries.items() if e["status"] != "ok"),
        "files_only_in_ref": sorted(set(files(ref)) - set(files(test))),
        "files_only_in_test": sorted(set(files(test)) - set(files(ref))),
        "temp_files": sorted(p.name for p in test.iterdir() if p.name.startswith(".")),
        "differing_bytes": differing_bytes,
        "differing_samples": differing_samples,
        "manifest_differs": sorted(i for i in ids if ref_entries.get(i) != entries.get(i)),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    p.add_argument("--ray", action="store_true", help="also run the job on local Ray (2 workers) and compare")
    p.add_argument("--dir", default=None, help="work dir (default: a temp dir); an existing ref/ there is resumed")
    args = p.parse_args(argv)
    import tempfile

    from bench.common import machine

    work = Path(args.dir or tempfile.mkdtemp(prefix="batch-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    items = make_items(work / "items.jsonl", args.items)
    ids = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    t0 = time.perf_counter()
    subprocess.run(command(items, work / "ref"), check=True)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    landed = run_with_kills(items, work / f"killed-{args.seed}", args.kills, random.Random(args.seed))
    report = {"items": args.items, "kills": args.kills, "manifest_lines_at_kills": landed,
              "uninterrupted_s": round(ref_s, 1), "killed_and_rerun_s": round(time.perf_counter() - t0, 1),
              "killed_vs_uninterrupted": compare(work / "ref", work / f"killed-{args.seed}", ids)}
    if args.ray:
        t0 = time.perf_counter()
        subprocess.run(command(items, work / "ray", ["--ray", "--workers", "2"]), check=True)
        report["ray_s"] = round(time.perf_counter() - t0, 1)
        report["ray_vs_uninterrupted"] = compare(work / "ref", work / "ray", ids)
    report["equal"] = all(not v for k in ("killed_vs_uninterrupted", "ray_vs_uninterrupted") if k in report
                          for v in report[k].values())
    report["machine"] = {**machine(), "load_avg": os.getloadavg()}
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["equal"] else 1)


if __name__ == "__main__":
    main()
