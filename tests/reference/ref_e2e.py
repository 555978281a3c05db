"""Runs the reference pipeline end to end (chatterbox-tts 0.1.7 `generate`) and records what it computes.

Runs in the reference env: `ref_e2e.py --ckpt DIR --inputs in.npz --out out.npz`. DIR is a
make_checkpoint dir (its manifest gives variant and size); the model is loaded by `from_local`
with the built-in voice (conds.pt), exactly as a user would, and `generate(text[, language_id])`
runs with its own defaults. The harness injects (patches.py):
- T3's token choice: inverse-CDF sampling of the processed distribution from shared uniforms,
  restricted to valid speech codes, for `n_tokens` steps, then EOS (random weights would
  otherwise run 1000 steps or hand S3Gen ids it cannot embed);
- the CFM start noise and HiFT's SineGen phases and noise;
- an identity watermarker (our port does not watermark).
Records the text ids T3 received, its output tokens, the first processed distributions, the
tokens S3Gen received, the mel HiFT received and the final waveform.
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
from check_load import STOP_SPEECH, SPEECH_CODES, load  # noqa: E402


def chooser(uniforms: np.ndarray, n_tokens: int):
    """The reference's own sampling, from shared uniforms, over valid codes; EOS after n_tokens."""

    def choose(step, probs):
        if step >= n_tokens:
            return STOP_SPEECH
        p = probs[:SPEECH_CODES]
        if p.sum() <= 0:  # all valid mass filtered out (min-p): the likeliest valid logit is gone too
            return int(np.argmax(probs[:SPEECH_CODES]))
        return int(min(np.searchsorted(np.cumsum(p), uniforms[step] * p.sum(), side="right"), SPEECH_CODES - 1))

    return choose


def main(argv=None):
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # a contended machine; tiny tensors gain nothing from threads
    manifest = json.loads((args.ckpt / "test_manifest.json").read_text())
    variant = manifest["variant"]
    patches.apply_sizes(manifest["size"])
    patches.offline_resources(args.ckpt)
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    tts = load(args.ckpt, variant)
    patches.disable_watermark(tts)

    spy = patches.MultinomialSpy(chooser(inputs["uniforms"], int(inputs["n_tokens"])))
    patches.install_multinomial_spy(spy)
    patches.install_cfm_noise(torch.from_numpy(inputs["cfm_noise"]).transpose(1, 2).contiguous())  # (1, 80, F)
    patches.install_hift_randomness(torch.from_numpy(inputs["phases"])[..., None],  # (1, 9, 1)
                                    torch.from_numpy(inputs["sine_noise"]).transpose(1, 2).contiguous())

    text, language = str(inputs["text"]), str(inputs["language"])
    with patches.recording_pipeline(tts) as rec:
        start = time.perf_counter()
        wav = tts.generate(text) if variant == "en" else tts.generate(text, language_id=language)
        seconds = time.perf_counter() - start
    np.savez(args.out, **rec, probs=np.stack(spy.probs), wav=wav[0].numpy(), seconds=np.float64(seconds))


if __name__ == "__main__":
    main()
