"""Runs the reference Turbo/Nano (chatterbox-tts 0.1.7 `ChatterboxTurboTTS`) and records what it computes.

Runs in the reference env: `ref_turbo.py --ckpt DIR --inputs in.npz --out out.npz`. DIR is a
make_checkpoint dir (variant turbo or nano); the model is loaded by `from_local` as a user would.
Three parts, each with injected randomness (patches.py), no arithmetic changed:
- `t3/<mode>`: `T3.inference_turbo` on the built-in voice and the text's ids, its token chosen by
  teacher forcing, argmax or inverse-CDF sampling from shared uniforms; records every
  speech_head output (last row), every processed distribution and the tokens.
- `e2e`: `generate(text)` with teacher-forced valid codes then EOS, the CFM start noise (its
  meanflow part through `torch.randn`) and the SineGen phases and noise; records the text ids,
  T3's tokens, the first distributions, S3Gen's tokens (3 silence tokens appended), the mel and the wav.
- `e2e_voiced`: S3Gen once more on the same tokens and noise, HiFT's F0 predictor replaced by an
  injected voiced track (as ref_hift.py's `voiced`), so the harmonic source runs throughout; the wav.
- `voice`: `prepare_conditionals(clip)` (loudness normalisation to -27 LUFS included); records the
  normalised 24 kHz signal and the conditionals.
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
from ref_t3 import choose_fn  # noqa: E402

STOP_SPEECH = 6562


def load(ckpt: Path, variant: str):
    from chatterbox.tts_turbo import ChatterboxTurboTTS

    patches.use_turbo_t3(variant)
    return ChatterboxTurboTTS.from_local(ckpt, "cpu")


def run_t3(tts, inputs: dict, mode: str) -> dict:
    import torch

    sub = {k.split("/", 2)[2]: v for k, v in inputs.items() if k.startswith(f"t3/{mode}/")}
    sub["mode"] = np.array(mode)
    spy = patches.MultinomialSpy(choose_fn(sub))
    patches.install_multinomial_spy(spy)
    logits = []
    hook = tts.t3.speech_head.register_forward_hook(
        lambda m, i, o: logits.append(o[0, -1].double().numpy().astype(np.float32)))
    params = json.loads(str(sub["params"]))
    text = torch.from_numpy(inputs["text_tokens"]).long()[None]
    with torch.inference_mode():
        tokens = tts.t3.inference_turbo(tts.conds.t3, text, temperature=params["temperature"], top_k=params["top_k"],
                                        top_p=params["top_p"], repetition_penalty=params["repetition_penalty"],
                                        max_gen_len=params["max_new_tokens"] - 1)
    hook.remove()
    return {"logits": np.stack(logits)[:, None], "probs": np.stack(spy.probs), "tokens": tokens[0].numpy()}


def run_e2e(tts, inputs: dict) -> dict:
    import torch

    forced = [int(t) for t in inputs["e2e/forced"]] + [STOP_SPEECH]
    spy = patches.MultinomialSpy(lambda step, p: forced[step])
    patches.install_multinomial_spy(spy)
    noise = torch.from_numpy(inputs["e2e/cfm_noise"]).transpose(1, 2).contiguous()  # (1, 80, F)
    patches.install_cfm_noise(noise)
    patches.install_meanflow_noise(noise)
    patches.install_hift_randomness(torch.from_numpy(inputs["e2e/phases"])[..., None],  # (1, 9, 1)
                                    torch.from_numpy(inputs["e2e/sine_noise"]).transpose(1, 2).contiguous())
    with patches.recording_pipeline(tts, "inference_turbo") as rec:
        start = time.perf_counter()
        wav = tts.generate(str(inputs["e2e/text"]))
        rec["seconds"] = np.float64(time.perf_counter() - start)
    return {**rec, "probs": np.stack(spy.probs), "wav": wav[0].numpy()}


def run_e2e_voiced(tts, inputs: dict, s3gen_tokens: np.ndarray) -> dict:
    """S3Gen as generate() calls it, on generate()'s tokens, with run_e2e's noise still installed
    and the injected F0 (1, mel frames) in place of the predicted one."""
    import torch

    hift = tts.s3gen.mel2wav
    predictor = hift.f0_predictor
    patches.install_hift_f0(hift, torch.from_numpy(inputs["e2e/f0"]))
    try:
        with torch.inference_mode():
            wav, _ = tts.s3gen.inference(speech_tokens=torch.from_numpy(s3gen_tokens), ref_dict=tts.conds.gen,
                                         n_cfm_timesteps=2)
    finally:
        hift.f0_predictor = predictor
    return {"wav": wav[0].numpy()}


def run_voice(tts, clip: Path) -> dict:
    rec = {}
    norm = tts.norm_loudness

    def norm_spy(wav, sr, *a, **kw):
        rec["raw24"] = np.asarray(wav, np.float32).copy()
        out = norm(wav, sr, *a, **kw)
        rec["norm24"] = np.asarray(out, np.float32).copy()
        return out

    tts.norm_loudness = norm_spy
    tts.prepare_conditionals(str(clip))
    t3, gen = tts.conds.t3, tts.conds.gen
    arr = lambda t: t.detach().numpy()  # noqa: E731  (CAMPPlus's output keeps its graph)
    return {**rec, "speaker_emb": arr(t3.speaker_emb), "prompt_tokens": arr(t3.cond_prompt_speech_tokens),
            "gen_prompt_token": arr(gen["prompt_token"]), "gen_prompt_feat": arr(gen["prompt_feat"]),
            "gen_embedding": arr(gen["embedding"])}


def main(argv=None):
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clip", type=Path, help="a reference clip for the voice part (> 5 s)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # a contended machine; tiny tensors gain nothing from threads
    manifest = json.loads((args.ckpt / "test_manifest.json").read_text())
    patches.apply_sizes(manifest["size"])
    inputs = dict(np.load(args.inputs, allow_pickle=False))
    tts = load(args.ckpt, manifest["variant"])
    patches.disable_watermark(tts)
    out = {}
    for mode in ("teacher", "greedy", "sample"):
        out.update({f"t3/{mode}/{k}": v for k, v in run_t3(tts, inputs, mode).items()})
    out.update({f"e2e/{k}": v for k, v in run_e2e(tts, inputs).items()})
    if "e2e/f0" in inputs:
        out.update({f"e2e_voiced/{k}": v for k, v in run_e2e_voiced(tts, inputs, out["e2e/s3gen_tokens"]).items()})
    if args.clip:
        out.update({f"voice/{k}": v for k, v in run_voice(tts, args.clip).items()})
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
