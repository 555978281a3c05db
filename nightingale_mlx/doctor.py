"""`nightingale doctor`: what this install runs on, in a few lines (for bug reports and set-up checks)."""

import importlib.metadata
import importlib.util
import os
import platform
import sys

from . import __version__, blas

EXTRAS = {"playback": "sounddevice", "coreml": "coremltools", "ja": "pykakasi", "zh": "spacy_pkuseg",
          "server": "fastapi"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _blas_line() -> str:
    if not sys.platform.startswith("linux"):
        return "not needed (MLX uses Accelerate/Metal here)"
    if blas.preloaded():
        return f"preloaded ({os.environ['LD_PRELOAD']})"
    if os.path.exists(blas.openblas_path()):
        return f"installed at {blas.openblas_path()}; the nightingale command preloads it"
    return "missing: MLX uses a slow reference BLAS; apt-get install libopenblas0-pthread"


def _watermark_line() -> str:
    from .watermark import PERTH_DIST, installed_checkpoint

    if installed_checkpoint() is not None:
        return f"Perth weights from {PERTH_DIST} {_version(PERTH_DIST)} (outputs are watermarked)"
    return f"{PERTH_DIST} not installed: outputs of models converted without it are NOT watermarked"


def report() -> str:
    import mlx.core as mx

    from .loader import cache_root

    cache = cache_root()
    existing = next(p for p in (cache, *cache.parents) if p.exists())  # where it would be created
    cache_state = "writable" if os.access(existing, os.W_OK) else "not writable"
    extras = ", ".join(f"{name} {'yes' if importlib.util.find_spec(module) else 'no'}"
                       for name, module in EXTRAS.items())
    lines = {
        "nightingale-mlx": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "mlx": f"{_version('mlx')}, device {mx.default_device()}, metal {'yes' if mx.metal.is_available() else 'no'}",
        "mlx-lm": _version("mlx-lm"),
        "OpenBLAS": _blas_line(),
        "cache dir": f"{cache} ({'exists' if cache.exists() else 'not created yet'}, {cache_state})",
        "extras": extras,
        "watermark": _watermark_line(),
    }
    return "\n".join(f"{k:>16}: {v}" for k, v in lines.items())
