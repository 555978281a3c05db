"""Small builders shared by unit tests."""

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from mlx.utils import tree_flatten
from safetensors.numpy import save_file

from nightingale_mlx.config import T3Config
from tests.reference.sizes import TINY_T3
from tests.reference.weights import random_state_dict

# At full size, HiFT's fp16 Core ML waveform falls just short of 30 dB on random weights (28.5 dB
# English, 29.0 dB Turbo; README "iOS"): the full-size bundle tests hold it to this floor instead.
HIFT_WAV_FLOOR_DB = 28.0


def tiny_t3_config(**kw) -> T3Config:
    return T3Config(**{**TINY_T3, "alignment_heads": [[3, 1], [2, 0], [1, 1]], **kw})


def write_original_t3(directory: Path, variant: str = "mtl-v2", seed: int = 0, drop=(), extra=None,
                      dtype=np.float32) -> Path:
    """A tiny T3 checkpoint with the reference's key names, as a safetensors file of `dtype`."""
    from nightingale_mlx.models.t3 import T3

    text_vocab = 704 if variant == "en" else 2454
    cfg = tiny_t3_config(text_vocab_size=text_vocab)
    spec = [(k, v.shape) for k, v in tree_flatten(T3(cfg).parameters())]
    spec += [("text_head.weight", (text_vocab, cfg.hidden_size)), ("tfmr.embed_tokens.weight", (8, cfg.hidden_size))]
    state = {k: v.astype(dtype) for k, v in random_state_dict(spec, seed).items() if k not in drop}
    state.update(extra or {})
    name = {"en": "t3_cfg.safetensors", "mtl-v2": "t3_mtl23ls_v2.safetensors",
            "mtl-v3": "t3_mtl23ls_v3.safetensors"}[variant]
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / name))
    return directory


ROOT = Path(__file__).resolve().parents[1]


def _default_sigint():
    # A shell without job control starts background jobs with SIGINT ignored, and a Python child
    # then keeps ignoring it: the Ctrl-C these tests send must reach the CLI's own handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def in_a_terminal(args, cache, until: bytes, interrupt: bool):
    """Runs the CLI with stderr on a pty; reads until UNTIL, optionally sends SIGINT; (code, stderr).
    Each wait is bounded (120 s) and the child never outlives the call."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nightingale_mlx", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "NIGHTINGALE_CACHE": str(cache)},
                            stdout=subprocess.DEVNULL, stderr=slave, preexec_fn=_default_sigint)
    os.close(slave)
    err, deadline = b"", time.monotonic() + 120
    try:
        while until not in err:
            if not select.select([master], [], [], max(0.0, deadline - time.monotonic()))[0]:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{until!r} not on stderr within 120 s: {err!r}")
            err += os.read(master, 4096)
        if interrupt:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        while chunk := os.read(master, 4096):
            err += chunk
    except OSError:  # EIO once the child has closed the terminal
        code = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:  # a wait that timed out: the child must not outlive the test
            proc.kill()
            proc.wait()
    return code, err.decode(errors="replace")
