"""Nightingale MLX: Chatterbox text-to-speech on Apple Silicon with MLX."""

__version__ = "0.1.0"
