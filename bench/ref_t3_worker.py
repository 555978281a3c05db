"""The reference's T3 on the same workload, in the reference env (chatterbox-tts 0.1.7).

    $NIGHTINGALE_REF_PYTHON bench/ref_t3_worker.py CKPT_DIR --variant en --tokens N [--cfg W]

EOS is never chosen (the next most likely token stands in), so every run decodes exactly N
tokens, as ours does. A fresh model per measured call: 0.1.7's analyzer hooks accumulate.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))

import numpy as np  # noqa: E402
import patches  # noqa: E402
from make_checkpoint import T3_FILES, build_t3  # noqa: E402


def main():
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from safetensors.torch import load_file

    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("--variant", default="en")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--cfg", type=float, default=0.5)
    p.add_argument("--text-len", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    state = load_file(str(args.ckpt / T3_FILES[args.variant]))
    eos = 6562
    stamps = []

    def choose(step, probs):
        stamps.append(time.perf_counter())
        order = np.argsort(probs)[::-1]
        return int(order[1] if order[0] == eos else order[0])

    patches.install_multinomial_spy(patches.MultinomialSpy(choose))

    def run(tokens, seed):
        t3 = build_t3(args.variant)
        t3.load_state_dict(state)
        rng = np.random.default_rng(seed)
        cond = T3Cond(
            speaker_emb=torch.from_numpy(np.abs(rng.standard_normal((1, 256))).astype(np.float32) / 16),
            cond_prompt_speech_tokens=torch.from_numpy(rng.integers(0, 6561, (1, 150))),
            emotion_adv=0.5 * torch.ones(1, 1, 1),
        )
        text = torch.from_numpy(np.concatenate([[255], rng.integers(1, 700, args.text_len), [0]]))[None]
        stamps.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            t3.inference(t3_cond=cond, text_tokens=torch.cat([text, text]), max_new_tokens=tokens,
                         temperature=0.8, cfg_weight=args.cfg, repetition_penalty=1.2, min_p=0.05, top_p=1.0)
        t2 = time.perf_counter()
        return {"prefill_s": stamps[0] - t0, "decode_tok_s": (len(stamps) - 1) / (t2 - stamps[0]),
                "tokens": len(stamps)}

    run(8, 99)
    runs = [run(args.tokens, i) for i in range(args.repeats)]
    med = lambda k: float(np.median([r[k] for r in runs]))
    print(json.dumps({"cfg_weight": args.cfg, "tokens": args.tokens, "prefill_s": med("prefill_s"),
                      "decode_tok_s": med("decode_tok_s"), "runs": runs, "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
