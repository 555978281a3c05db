"""Runs the reference voice preparation (chatterbox-tts 0.1.7) on a checkpoint dir and audio clips.

Runs in the reference env:
    ref_cloning.py --ckpt DIR --variant mtl-v2 --size tiny --clips a.flac b.flac --out out.npz

For each clip it follows `ChatterboxMultilingualTTS.prepare_conditionals` step by step (the
English `prepare_conditionals` is the same) and records the outputs and the intermediates our
side is compared on: the soxr 16 kHz signal, the torchaudio 16 kHz signal of the 10 s crop, the
tokenizer's log-mel, the Kaldi fbank, the voice encoder's trimmed-clip mel, and the resampler and
trim boundaries. Keys are `<clip index>/<name>`.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import patches  # noqa: E402
from make_checkpoint import build_s3gen  # noqa: E402

S3GEN_SR, S3_SR = 24000, 16000
ENC_COND_LEN, DEC_COND_LEN = 6 * S3_SR, 10 * S3GEN_SR
T3_PROMPT_LEN = 150


def load_models(ckpt: Path, variant: str):
    import torch
    from chatterbox.models.voice_encoder import VoiceEncoder
    from safetensors.torch import load_file

    def read(stem):
        pt, st = ckpt / f"{stem}.pt", ckpt / f"{stem}.safetensors"
        if variant != "en" and pt.exists():
            return torch.load(pt, map_location="cpu", weights_only=True), True
        return load_file(str(st)), False

    ve = VoiceEncoder()
    ve.load_state_dict(read("ve")[0])
    s3gen = build_s3gen()
    state, strict = read("s3gen")
    s3gen.load_state_dict(state, strict=strict)  # from_local: .pt strict, English .safetensors not
    return ve.eval(), s3gen.eval()


def prepare(ve, s3gen, clip: Path) -> dict:
    import librosa
    import torch
    from chatterbox.models.s3gen.s3gen import get_resampler
    from chatterbox.models.s3gen.xvector import extract_feature
    from chatterbox.models.voice_encoder.melspec import melspectrogram

    out = {}
    ref24, _ = librosa.load(str(clip), sr=S3GEN_SR)
    ref16 = librosa.resample(ref24, orig_sr=S3GEN_SR, target_sr=S3_SR)
    ref24c = ref24[:DEC_COND_LEN]
    with torch.inference_mode():
        gen = s3gen.embed_ref(ref24c, S3GEN_SR, device="cpu")
        tokens, _ = s3gen.tokenizer.forward([ref16[:ENC_COND_LEN]], max_len=T3_PROMPT_LEN)
    spk = ve.embeds_from_wavs([ref16], sample_rate=S3_SR).mean(axis=0, keepdims=True)
    out.update(
        speaker_emb=spk.astype(np.float32),
        prompt_tokens=torch.atleast_2d(tokens).numpy(),
        gen_prompt_token=gen["prompt_token"].numpy(),
        gen_prompt_feat=gen["prompt_feat"].float().numpy(),
        gen_embedding=gen["embedding"].float().numpy(),
    )
    # Intermediates.
    with torch.inference_mode():
        ref16_ta = get_resampler(S3GEN_SR, S3_SR, "cpu")(torch.from_numpy(ref24c)[None])[0]
        out["ref16_ta"] = ref16_ta.numpy()
        out["fbank"] = extract_feature([ref16_ta])[0][0].numpy()
        out["tok_mel"] = s3gen.tokenizer.log_mel_spectrogram(torch.from_numpy(ref16[:ENC_COND_LEN])[None])[0].numpy().T
    trimmed, bounds = librosa.effects.trim(ref16, top_db=20)
    out["ref16"] = ref16
    out["ve_trim"] = np.asarray(bounds)
    out["ve_mel"] = melspectrogram(trimmed, ve.hp).T.astype(np.float32)
    return out


def main(argv=None):
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--size", default="tiny")
    p.add_argument("--clips", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    patches.apply_sizes(args.size)
    ve, s3gen = load_models(args.ckpt, args.variant)
    result = {}
    for i, clip in enumerate(args.clips):
        for k, v in prepare(ve, s3gen, clip).items():
            result[f"{i}/{k}"] = v
    np.savez(args.out, **result)


if __name__ == "__main__":
    main()
