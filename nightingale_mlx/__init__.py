"""Nightingale MLX: Chatterbox text-to-speech on Apple Silicon with MLX.

    import nightingale_mlx as ng
    tts = ng.load("ResembleAI/chatterbox")
    audio = tts.generate("Hello.", language="en", seed=0)
    audio.save("hello.wav")
"""

import importlib

__version__ = "0.1.0"

# Imported on first use, so `nightingale --help` (and Ctrl-C during start-up) stay light.
_EXPORTS = {"Audio": ".audio.clip", "load": ".loader", "TTS": ".tts", "Voice": ".voice"}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
