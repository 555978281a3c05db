"""Machine facts, peak memory and worker processes, shared by the benchmarks.

Each measured configuration runs in a fresh process (see `run_worker`), so the peak resident
memory it reports belongs to that configuration alone.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from nightingale_mlx.quality import dir_size_bytes, peak_rss_mb  # noqa: F401  (one definition, shared)

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


def run_worker(module: str, args: List[str], python: str = sys.executable, env: Dict = None) -> Dict:
    """Runs `python -m module args...` from the repo root; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [python, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
