"""Conversion step: the Perth watermark weights (resemble-perth's trained checkpoint) into the model dir."""

import logging
from pathlib import Path

from nightingale_mlx import watermark as wm

logger = logging.getLogger("nightingale_mlx.convert")


def watermark_step(checkpoint: Path, variant: str, recipe, config, out: Path, options: dict) -> None:
    """Writes `watermark.safetensors` from `options['watermark']` (a perth_net .pth.tar) or the
    installed resemble-perth; without either the model speaks unmarked (TTS warns once)."""
    source = options.get("watermark") or wm.installed_checkpoint()
    if source is None:
        logger.warning("resemble-perth is not installed and no --watermark file was given: the model dir "
                       "gets no watermark weights")
        return
    weights = wm.weights_from_checkpoint(source)
    wm.build(weights, source)  # refuses anything but the Perth implicit network
    wm.save_weights(weights, out / wm.WATERMARK_FILE)
