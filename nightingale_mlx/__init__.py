"""Nightingale MLX: Chatterbox text-to-speech on Apple Silicon with MLX.

    import nightingale_mlx as ng
    tts = ng.load("ResembleAI/chatterbox")
    audio = tts.generate("Hello.", language="en", seed=0)
    audio.save("hello.wav")
"""

__version__ = "0.1.0"

from .audio.clip import Audio  # noqa: E402,F401
from .loader import load  # noqa: E402,F401
from .tts import TTS  # noqa: E402,F401
from .voice import Voice  # noqa: E402,F401
