"""Timing, machine facts and peak memory, shared by the benchmarks.

Each measured configuration runs in a fresh process (see `run_worker`), so the peak resident
memory it reports belongs to that configuration alone.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent


def blas_library() -> str:
    """Which BLAS this process actually mapped (Linux); 'accelerate' is assumed on macOS."""
    if sys.platform == "darwin":
        return "accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("openblas", "mkl", "blis"):
        if name in maps:
            return name
    return "reference (slow)" if "libblas" in maps or "mlx" in maps else "unknown"


def machine() -> Dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import mlx.core as mx

        info.update(mlx=mx.__version__, device=str(mx.default_device()), blas=blas_library())
    except ImportError:
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(fn: Callable[[], object], warmup: int = 1, repeats: int = 3) -> Dict:
    """Runs fn warmup + repeats times; returns seconds as min/median/max and the raw runs."""
    for _ in range(warmup):
        fn()
    runs: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def run_worker(module: str, args: List[str], python: str = sys.executable, env: Dict = None) -> Dict:
    """Runs `python -m module args...` from the repo root; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [python, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
