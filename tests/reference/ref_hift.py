"""Runs the reference HiFT vocoder (chatterbox-tts 0.1.7 `S3Gen.mel2wav`) and records what it computes.

Runs in the reference env: `ref_hift.py --ckpt DIR --size tiny --inputs in.npz --out out.npz`
(`ref_hift.py --dump-spec --size full --out tests/fixtures/hift_full_spec.json` writes the key spec).
For each scenario in the inputs (`<name>/mel` (1, T, 80) channels-last, `<name>/phases` (1, 9),
`<name>/noise` (1, N, 9), optional `<name>/f0` (1, T)) it records the predicted F0, the NSF
source, conv_post's output and the waveform of `HiFTGenerator.inference`, with the SineGen phases
and noise (and F0, where given) injected through patches.py. Also records S3Gen's `trim_fade`.
`--dtype float64` is the exact answer: the module after `.double()`, float64 inputs, torch's
default dtype float64 (SineGen builds its phase matrix with a bare `torch.zeros`, so its cumsum
runs in float64 too) and the Hann window computed in float64 (a plain attribute `.double()` misses).
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
from make_checkpoint import MANIFEST, build_s3gen, torch_spec  # noqa: E402


def load_s3gen(ckpt: Path):
    """Loads s3gen.pt strictly, or s3gen.safetensors as the English from_local does (strict=False)."""
    import torch
    from safetensors.torch import load_file

    s3gen = build_s3gen()
    name = json.loads((ckpt / MANIFEST).read_text())["files"]["s3gen"]["file"]
    if name.endswith(".pt"):
        s3gen.load_state_dict(torch.load(ckpt / name, map_location="cpu", weights_only=True))
    else:
        s3gen.load_state_dict(load_file(str(ckpt / name)), strict=False)
    return s3gen.eval()


def main(argv=None):
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--size", default="tiny")
    p.add_argument("--inputs", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--dump-spec", action="store_true",
                   help="only write the mel2wav key spec (name, shape, dtype) of S3Gen at --size as JSON")
    args = p.parse_args(argv)

    patches.apply_sizes(args.size)
    if args.dump_spec:
        spec = [[k, list(s), d] for k, s, d in torch_spec(build_s3gen()) if k.startswith("mel2wav.")]
        args.out.write_text(json.dumps(spec))
        return
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    s3gen = load_s3gen(args.ckpt).to(dtype)
    hift = s3gen.mel2wav
    if args.dtype == "float64":
        from scipy.signal import get_window

        hift.stft_window = torch.from_numpy(get_window("hann", hift.istft_params["n_fft"], fftbins=True))
    tensor = lambda a: torch.from_numpy(a).to(dtype)  # noqa: E731
    predictor = hift.f0_predictor
    out = {"trim_fade": s3gen.trim_fade.numpy()}
    post = []  # conv_post's output (log-magnitude | phase), before exp/sin and the iSTFT
    hift.conv_post.register_forward_hook(lambda module, inp, output: post.append(output))
    for name in json.loads(str(inputs["scenarios"])):
        mel = tensor(inputs[f"{name}/mel"]).transpose(1, 2).contiguous()  # (1, 80, T)
        noise = tensor(inputs[f"{name}/noise"]).transpose(1, 2).contiguous()  # (1, 9, N)
        phases = tensor(inputs[f"{name}/phases"])[..., None]  # (1, 9, 1)
        patches.install_hift_randomness(phases, noise)
        hift.f0_predictor = predictor
        with torch.inference_mode():
            out[f"{name}/f0"] = predictor(mel).numpy()
            if f"{name}/f0" in inputs:
                patches.install_hift_f0(hift, tensor(inputs[f"{name}/f0"]))
            start = time.perf_counter()
            wav, source = hift.inference(speech_feat=mel)
            out[f"{name}/seconds"] = np.array(time.perf_counter() - start)
        out[f"{name}/conv_post"] = post.pop().transpose(1, 2).numpy()  # (1, 120 T + 1, 18)
        out[f"{name}/wav"] = wav.numpy()
        out[f"{name}/source"] = source.transpose(1, 2).numpy()  # (1, N, 1) channels-last
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
