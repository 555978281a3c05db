"""Voices: the conditionals T3 and S3Gen need to speak like a reference clip (spec §1.1, §1.3).

`prepare_voice` reproduces the reference's `prepare_conditionals`: the clip is loaded at 24 kHz
(soxr_hq) and resampled to 16 kHz (soxr_hq) for T3's prompt tokens (first 6 s) and the voice
encoder (the whole clip, which we bound at 60 s); the first 10 s at 24 kHz give S3Gen's
reference mel, and their torchaudio-sinc 16 kHz version feeds CAMPPlus and the S3 tokenizer.
A `Voice` holds embeddings only; exaggeration is a generate-time argument.

Turbo and Nano (`tts_turbo.prepare_conditionals`) differ: the clip must be over 5 s, it is
loudness-normalised to -27 LUFS (pyloudnorm, ITU-R BS.1770, as the reference) before anything
else, and T3's prompt is 375 tokens from the first 15 s. A Voice records which family it was made
for (`family`), and a model refuses a voice of the other family.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .audio.io import load_checked
from .audio.mel import S3GEN_MEL, mel_spectrogram
from .audio.resample import resample_sinc, resample_soxr
from .config import (DEC_COND_SECONDS, ENC_COND_SECONDS, MIN_VOICE_SECONDS, S3_SR, S3GEN_SR, TURBO_PROMPT_TOKENS,
                     VE_MAX_SECONDS, CloningConfig)
from .models.campplus import CAMPPlus
from .models.s3tokenizer import S3TokenizerV2
from .models.voice_encoder import VoiceEncoder

VOICE_METADATA = {"format": "nightingale-mlx", "format_version": "1", "kind": "voice"}
# Voice families: "standard" (English and multilingual: 6 s, 150 prompt tokens) and "turbo"
# (Turbo and Nano: loudness-normalised, 15 s, 375 prompt tokens). Older files are "standard".
VOICE_FAMILIES = ("standard", "turbo")
TURBO_LOUDNESS_LUFS = -27.0
TURBO_MIN_VOICE_SECONDS = 5.0  # tts_turbo asserts the prompt is longer than 5 s
TURBO_ENC_COND_SECONDS = 15
CLONING_FILE = "cloning.safetensors"
T3_PROMPT_TOKENS = 150  # T3Config.speech_cond_prompt_len
MEL_FRAMES_PER_TOKEN = 2  # S3Gen: 50 mel frames/s, 25 tokens/s


class VoiceError(ValueError):
    """A voice file that is missing, malformed or not a voice."""


# name -> (rank, dtype): what a Voice file must hold.
_LAYOUT = {
    "speaker_emb": (2, mx.float32),
    "prompt_tokens": (2, mx.int32),
    "gen_prompt_token": (2, mx.int32),
    "gen_prompt_feat": (3, mx.float32),
    "gen_embedding": (2, mx.float32),
}


@dataclass
class Voice:
    """A cloned (or built-in) voice.

    speaker_emb (1, 256) VoiceEncoder embedding for T3; prompt_tokens (1, <=150) int32 T3 prompt;
    gen_prompt_token (1, Np) int32, gen_prompt_feat (1, Tm, 80) log-mel and gen_embedding (1, 192)
    CAMPPlus x-vector for S3Gen.
    """

    speaker_emb: mx.array
    prompt_tokens: mx.array
    gen_prompt_token: mx.array
    gen_prompt_feat: mx.array
    gen_embedding: mx.array
    family: str = "standard"  # which models it is for (VOICE_FAMILIES)

    def __post_init__(self):
        if self.family not in VOICE_FAMILIES:
            raise VoiceError(f"voice family {self.family!r}: expected one of {', '.join(VOICE_FAMILIES)}")
        for name, (rank, dtype) in _LAYOUT.items():
            value = getattr(self, name)
            value = mx.array(value) if not isinstance(value, mx.array) else value
            if value.ndim != rank or value.shape[0] != 1:
                raise VoiceError(f"voice {name}: expected rank {rank} with batch 1, got shape {value.shape}")
            setattr(self, name, value.astype(dtype))
        mx.eval([getattr(self, name) for name in _LAYOUT])  # usable from any thread (model_io.materialize)

    def check_family(self, family: str, model: str) -> None:
        """A clear error when this voice was made for the other family of models."""
        if self.family != family:
            what = {"turbo": "Turbo/Nano", "standard": "the English/multilingual models"}
            raise VoiceError(f"this voice was made for {what[self.family]}, not for this {model} model "
                             f"(its prompt differs); bake it again with this model: nightingale voice REF.wav -m MODEL")

    def save(self, path) -> Path:
        """Writes the voice as safetensors (metadata kind=voice), atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise VoiceError(f"{path}: a voice file must end in .safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.safetensors")  # mx.save_safetensors wants the suffix
        mx.save_safetensors(str(tmp), {name: getattr(self, name) for name in _LAYOUT},
                            metadata={**VOICE_METADATA, "family": self.family})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Voice":
        """Reads a voice written by `save` (or by the converter from `conds.pt`)."""
        path = Path(path)
        if not path.is_file():
            raise VoiceError(f"{path}: no such voice file")
        try:
            arrays, metadata = mx.load(str(path), return_metadata=True)
        except Exception as e:  # MLX raises bare RuntimeErrors on corrupt files
            raise VoiceError(f"{path}: not a readable safetensors file ({e}); bake the voice again") from None
        if metadata.get("format") != VOICE_METADATA["format"] or metadata.get("kind") != "voice":
            raise VoiceError(f"{path}: not a nightingale-mlx voice file; make one with `nightingale voice REF.wav`")
        missing = sorted(set(_LAYOUT) - set(arrays))
        extra = sorted(set(arrays) - set(_LAYOUT))
        if missing or extra:
            raise VoiceError(f"{path}: malformed voice (missing {missing}, unexpected {extra}); bake it again")
        return cls(**arrays, family=metadata.get("family", "standard"))


class CloningModels(nn.Module):
    """The three networks of `cloning.safetensors`: `ve`, `tokenizer`, `speaker_encoder`."""

    def __init__(self, cfg: CloningConfig):
        super().__init__()
        self.cfg = cfg
        self.ve = VoiceEncoder(cfg.voice_encoder)
        self.tokenizer = S3TokenizerV2(cfg.s3_tokenizer)
        self.speaker_encoder = CAMPPlus(cfg.campplus)


def load_cloning(model_dir, config_section) -> CloningModels:
    """Loads `cloning.safetensors` of a converted model dir (strict), given config.json's `cloning`
    section ({"config": CloningConfig dict, "bits": ..., "group_size": ...})."""
    from . import model_io, quant

    if not config_section:
        raise model_io.ModelDirError(f"{model_dir}: no cloning models in config.json; convert the model again")
    models = CloningModels(CloningConfig.from_dict(config_section["config"]))
    quant.apply(models, int(config_section.get("bits", 32)), int(config_section.get("group_size", 64)))
    model_io.load_weights(models, Path(model_dir) / CLONING_FILE)
    models.eval()
    model_io.materialize(models)
    return models


def load_reference(wav_or_path: Union[str, Path, np.ndarray], sample_rate: int = None,
                   min_seconds: float = MIN_VOICE_SECONDS) -> np.ndarray:
    """A path, or (samples, sample_rate), -> validated float32 mono at 24 kHz (librosa.load(sr=24000))."""
    return load_checked(wav_or_path, sample_rate, S3GEN_SR, min_seconds, "reference audio", VoiceError)


def normalize_loudness(wav: np.ndarray, sample_rate: int, target_lufs: float = TURBO_LOUDNESS_LUFS) -> np.ndarray:
    """tts_turbo.norm_loudness: gain to `target_lufs` integrated loudness (pyloudnorm's BS.1770
    meter, as the reference); left as is when the gain is not finite and positive (e.g. silence)."""
    import warnings

    import pyloudnorm

    with warnings.catch_warnings():  # -inf loudness of near-silence warns; the gain check handles it
        warnings.simplefilter("ignore", RuntimeWarning)
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(wav)  # float32 in, as librosa.load gives
        gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    if np.isfinite(gain) and gain > 0.0:
        wav = wav * np.float32(gain)  # a Python float times float32 samples stays float32 (NEP 50)
    return wav.astype(np.float32, copy=False)


def prepare_voice(models: CloningModels, wav_or_path, sample_rate: int = None, family: str = "standard") -> Voice:
    """Reference audio (a file path, or samples with their `sample_rate`) -> Voice, as the reference's
    `prepare_conditionals` computes it (crops: 6 s for T3 tokens, 10 s for S3Gen, 60 s bound for the VE).
    `family="turbo"`: tts_turbo's (over 5 s, -27 LUFS first, 15 s / 375 tokens for T3)."""
    turbo = family == "turbo"
    ref24 = load_reference(wav_or_path, sample_rate, TURBO_MIN_VOICE_SECONDS if turbo else MIN_VOICE_SECONDS)
    if turbo:
        ref24 = normalize_loudness(ref24, S3GEN_SR)
    ref16 = resample_soxr(ref24, S3GEN_SR, S3_SR)
    gen = embed_ref(models, ref24[: DEC_COND_SECONDS * S3GEN_SR])
    enc_seconds, prompt_len = ((TURBO_ENC_COND_SECONDS, TURBO_PROMPT_TOKENS) if turbo
                               else (ENC_COND_SECONDS, T3_PROMPT_TOKENS))
    prompt_tokens = models.tokenizer(ref16[: enc_seconds * S3_SR], max_len=prompt_len)
    speaker_emb = models.ve.embed_wav(ref16[: VE_MAX_SECONDS * S3_SR])
    return Voice(speaker_emb=speaker_emb, prompt_tokens=prompt_tokens, family=family, **gen)


def embed_ref(models: CloningModels, ref24: np.ndarray) -> dict:
    """`S3Gen.embed_ref(ref24, 24000)`: reference mel, CAMPPlus x-vector and prompt tokens."""
    feat = mel_spectrogram(ref24, S3GEN_MEL)[None]  # (1, Tm, 80)
    ref16 = resample_sinc(ref24, S3GEN_SR, S3_SR)
    embedding = models.speaker_encoder.embed_wav(ref16)
    tokens = models.tokenizer(ref16)
    n_frames = feat.shape[1]
    if n_frames != MEL_FRAMES_PER_TOKEN * tokens.shape[1]:
        tokens = tokens[:, : n_frames // MEL_FRAMES_PER_TOKEN]  # the reference truncates the same way
    return dict(gen_prompt_token=tokens, gen_prompt_feat=feat, gen_embedding=embedding)
