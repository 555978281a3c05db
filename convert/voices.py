"""The built-in voice: `conds.pt` (torch.save of T3Cond.__dict__ + S3Gen's ref dict) -> Voice safetensors."""

from pathlib import Path

import numpy as np

from nightingale_mlx.voice import Voice

from .checkpoint import flatten_state, read_pt
from .sanitize.common import ConversionError

DEFAULT_VOICE = Path("voices") / "default.safetensors"
# conds.pt key -> Voice field. Dropped: t3.emotion_adv (exaggeration is a generate-time argument),
# gen.prompt_token_len / prompt_feat_len (lengths of the arrays themselves).
CONDS_FIELDS = {
    "t3.speaker_emb": "speaker_emb",
    "t3.cond_prompt_speech_tokens": "prompt_tokens",
    "gen.prompt_token": "gen_prompt_token",
    "gen.prompt_feat": "gen_prompt_feat",
    "gen.embedding": "gen_embedding",
}


def voice_from_conds(path, family: str = "standard") -> Voice:
    """Reads conds.pt without torch (tensors only) into a Voice (for `family`'s models)."""
    flat = flatten_state(read_pt(path))
    missing = [k for k in CONDS_FIELDS if k not in flat]
    if missing:
        raise ConversionError(f"{path}: not a Chatterbox conds.pt (missing {', '.join(missing)})")
    arrays = {}
    for key, name in CONDS_FIELDS.items():
        value = flat[key]
        arrays[name] = value.astype(np.int32) if np.issubdtype(value.dtype, np.integer) else value.astype(np.float32)
    return Voice(**arrays, family=family)


def convert_conds(conds_path, out_path, family: str = "standard") -> Path:
    """conds.pt -> a Voice safetensors file at out_path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return voice_from_conds(conds_path, family).save(out_path)


def voices_step(checkpoint: Path, variant: str, recipe, config, out: Path, options: dict):
    """convert.STEPS entry: the checkpoint's conds.pt becomes voices/default.safetensors."""
    conds = Path(checkpoint) / "conds.pt"
    if not conds.is_file():
        raise ConversionError(f"{checkpoint}: no conds.pt (the built-in voice)")
    convert_conds(conds, Path(out) / DEFAULT_VOICE, config.voice_family)
