"""OpenBLAS on Linux: MLX's CPU wheel links a reference BLAS that is ~15-45x slower.

Only the console script re-executes itself with OpenBLAS preloaded (`reexec_with_openblas`); an
in-process `cli.main(argv)` never touches the environment or the process. Without OpenBLAS the
note is printed once per machine (a marker in the cache dir) and always in `nightingale doctor`.
"""

import os
import sys
from pathlib import Path

DEFAULT_OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
NOTE = ("nightingale: note: MLX on Linux is much faster with OpenBLAS: "
        "apt-get install libopenblas0-pthread (shown once; see nightingale doctor)")
MARKER = ".openblas-note-shown"


def openblas_path() -> str:
    """$NIGHTINGALE_OPENBLAS (tests point it at a missing file to play a machine without it)."""
    return os.environ.get("NIGHTINGALE_OPENBLAS", DEFAULT_OPENBLAS)


def preloaded() -> bool:
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def needed() -> bool:
    """True on Linux when OpenBLAS is neither preloaded nor installed."""
    return sys.platform.startswith("linux") and not preloaded() and not os.path.exists(openblas_path())


def reexec_with_openblas(argv) -> None:
    """Replaces this process with `python -m nightingale_mlx ARGV` under LD_PRELOAD=OpenBLAS, if useful."""
    if not sys.platform.startswith("linux") or preloaded() or not os.path.exists(openblas_path()):
        return
    env = {**os.environ, "LD_PRELOAD": f"{openblas_path()} {os.environ.get('LD_PRELOAD', '')}".strip()}
    os.execve(sys.executable, [sys.executable, "-m", "nightingale_mlx", *argv], env)


def note_once(cache_dir: Path) -> None:
    """Prints NOTE on stderr the first time on this machine (per cache dir), after the work is done."""
    if not needed():
        return
    marker = Path(cache_dir) / MARKER
    if marker.exists():
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache: say it every time rather than never
        pass
    print(NOTE, file=sys.stderr)
