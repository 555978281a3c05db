"""Runs the reference voice conversion (chatterbox-tts 0.1.7 `ChatterboxVC.generate`) and records it.

Runs in the reference env: `ref_vc.py --ckpt DIR --inputs in.npz --out out.npz --source S --target T`.
DIR is a make_checkpoint dir. English/multilingual files: `ChatterboxVC.from_local` as a user
would (10 CFM steps with CFG). Turbo/Nano files: the same `ChatterboxVC` around
`S3Gen(meanflow=True)` loaded strictly from `s3gen_meanflow.safetensors` (0.1.7 has no Turbo VC;
this is its S3Gen on the same tokens and noise). Injected (patches.py): the CFM start noise (and
the meanflow `torch.randn`), SineGen's phases and noise, an identity watermarker. The shared
buffers are longer than needed; both sides take their first frames/samples. Two runs: HiFT's own
F0 (`run`) and an injected voiced F0 track (`f0`: a random-weight F0 predictor gives a near-constant
pitch). Records the 16 kHz source, its tokens, the target's prompt, the mel HiFT received and the wav.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import patches  # noqa: E402

TURBO = ("turbo", "nano")


def load(ckpt: Path, variant: str):
    from chatterbox.vc import ChatterboxVC

    if variant not in TURBO:
        return ChatterboxVC.from_local(ckpt, "cpu")
    from chatterbox.models.s3gen import S3Gen
    from safetensors.torch import load_file

    s3gen = S3Gen(meanflow=True)
    s3gen.load_state_dict(load_file(str(ckpt / "s3gen_meanflow.safetensors")), strict=True)
    return ChatterboxVC(s3gen.eval(), "cpu")


def run(vc, inputs: dict, source: Path, target: Path, inject_f0: bool) -> dict:
    import torch

    from chatterbox.models.s3tokenizer import S3_SR

    rec = {}
    # Sizes first (the tokenizer's count and the target's prompt), then the noise of that shape.
    import librosa

    audio16 = torch.from_numpy(librosa.load(str(source), sr=S3_SR)[0]).float()[None]
    n = int(vc.s3gen.tokenizer(audio16)[0].shape[1])
    vc.set_target_voice(str(target))
    frames = 2 * (int(vc.ref_dict["prompt_token"].shape[1]) + n)
    mel_frames = frames - int(vc.ref_dict["prompt_feat"].shape[1])
    noise = torch.from_numpy(inputs["cfm_noise"][:, :frames]).transpose(1, 2).contiguous()
    patches.install_cfm_noise(noise)
    patches.install_meanflow_noise(noise)
    patches.install_hift_randomness(torch.from_numpy(inputs["phases"])[..., None],
                                    torch.from_numpy(inputs["sine_noise"][:, : mel_frames * 480]).transpose(1, 2)
                                    .contiguous())
    if inject_f0:
        patches.install_hift_f0(vc.s3gen.mel2wav, torch.from_numpy(inputs["f0"][:, :mel_frames]))

    def tokenizer_hook(module, args, out):
        rec["source16"] = args[0].reshape(-1).numpy().copy()
        rec["tokens"] = out[0].reshape(-1).numpy().copy()

    hift = vc.s3gen.hift_inference

    def hift_spy(speech_feat, *a, **kw):
        rec["mel"] = speech_feat.float().numpy().transpose(0, 2, 1).copy()
        return hift(speech_feat, *a, **kw)

    hook = vc.s3gen.tokenizer.register_forward_hook(tokenizer_hook)
    vc.s3gen.hift_inference = hift_spy
    start = time.perf_counter()
    wav = vc.generate(str(source), target_voice_path=str(target))
    rec["seconds"] = np.float64(time.perf_counter() - start)
    hook.remove()
    vc.s3gen.hift_inference = hift
    rec["wav"] = wav[0].numpy()
    rec.update({f"prompt/{k}": vc.ref_dict[k].detach().numpy() for k in ("prompt_token", "prompt_feat", "embedding")})
    return rec


def main(argv=None):
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--target", type=Path, required=True)
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # a contended machine
    manifest = json.loads((args.ckpt / "test_manifest.json").read_text())
    patches.apply_sizes(manifest["size"])
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    vc = load(args.ckpt, manifest["variant"])
    patches.disable_watermark(vc)
    out = {}
    for name, inject in (("run", False), ("f0", True)):
        out.update({f"{name}/{k}": v for k, v in run(vc, inputs, args.source, args.target, inject).items()})
    out["n_cfm_timesteps"] = np.array(2 if vc.s3gen.meanflow else 10)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
