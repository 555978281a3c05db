"""The reference (chatterbox-tts 0.1.7) on bench.worker's workloads, in the reference env.

    $NIGHTINGALE_REF_PYTHON bench/ref_worker.py CKPT_DIR --workload t3|s3gen|e2e --tokens N [--variant en|turbo|nano]

Same work as ours: exactly N valid speech tokens (EOS and ids >= 6561 are never chosen),
the same text length, the built-in voice. T3 and S3Gen are called as `generate()` calls them
(Turbo/Nano: `ChatterboxTurboTTS.generate`'s `inference_turbo` with its default sampling, no CFG,
then S3Gen on the tokens plus 3 silence tokens with 2 meanflow steps); the Perth watermark is not
part of the workload (our port does not watermark).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))

import numpy as np  # noqa: E402
import patches  # noqa: E402

SPEECH_CODES, TEXT_LEN = 6561, 60
TURBO = ("turbo", "nano")
S3GEN_SIL = 4299  # tts_turbo: three appended after T3's tokens


def peak_rss_mb() -> float:
    """VmHWM, as nightingale_mlx.quality.peak_rss_mb (this env cannot import it): ru_maxrss would
    report the parent's peak, since it survives fork + exec."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def load(ckpt: Path, variant: str):
    patches.offline_resources(ckpt)
    if variant in TURBO:
        from chatterbox.tts_turbo import ChatterboxTurboTTS

        patches.use_turbo_t3(variant)
        return ChatterboxTurboTTS.from_local(ckpt, "cpu")
    if variant == "en":
        from chatterbox.tts import ChatterboxTTS

        return ChatterboxTTS.from_local(ckpt, "cpu")
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS

    return ChatterboxMultilingualTTS.from_local(ckpt, "cpu")


def main():
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("--variant", default="en")
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--workload", choices=["t3", "s3gen", "e2e"], default="t3")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--cfg", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    patches.apply_sizes(args.size)
    tts = load(args.ckpt, args.variant)
    turbo = args.variant in TURBO
    cfg_weight = 0.0 if turbo else args.cfg
    stamps = []

    def choose(step, probs):
        stamps.append(time.perf_counter())
        return int(np.argmax(probs[:SPEECH_CODES]))  # a valid code: never EOS, never unembeddable

    patches.install_multinomial_spy(patches.MultinomialSpy(choose))

    def run(tokens: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        stamps.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if args.workload == "s3gen":
                speech = torch.from_numpy(rng.integers(0, 6561, tokens))
            else:
                text = torch.from_numpy(np.concatenate([[255], rng.integers(1, 700, TEXT_LEN), [0]]))[None]
                if turbo:  # the first token comes from the prefill, then max_gen_len more
                    speech = tts.t3.inference_turbo(tts.conds.t3, text, temperature=0.8, top_k=1000, top_p=0.95,
                                                    repetition_penalty=1.2, max_gen_len=tokens - 1)[0]
                else:
                    speech = tts.t3.inference(t3_cond=tts.conds.t3, text_tokens=torch.cat([text, text]),
                                              max_new_tokens=tokens, temperature=0.8, cfg_weight=args.cfg,
                                              repetition_penalty=1.2, min_p=0.05, top_p=1.0)[0]
            t1 = time.perf_counter()
            if args.workload != "t3" and turbo:
                speech = torch.cat([speech, torch.tensor([S3GEN_SIL] * 3)])
                tts.s3gen.inference(speech_tokens=speech, ref_dict=tts.conds.gen, n_cfm_timesteps=2)
            elif args.workload != "t3":
                tts.s3gen.inference(speech_tokens=speech, ref_dict=tts.conds.gen)
        t2 = time.perf_counter()
        out = {"total_s": t2 - t0, "audio_s": tokens * 0.04}
        if stamps:
            # stamps mark each sampling step; the last token's trailing forward is outside them
            out.update(prefill_s=stamps[0] - t0, decode_tok_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]))
        if args.workload != "t3":
            out["s3gen_s"] = t2 - t1
        return out

    run(8, 99)  # warm-up
    runs = [run(args.tokens, i) for i in range(args.repeats)]
    summary = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    print(json.dumps({"impl": "chatterbox-tts 0.1.7", "workload": args.workload, "tokens": args.tokens,
                      "cfg_weight": cfg_weight, **summary, "runs": runs, "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
