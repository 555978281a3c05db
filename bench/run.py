"""Speed and memory of converted models on this machine.

    python -m bench.run -m MODEL_DIR [-m MODEL_DIR ...] [--tokens 100] [--json]

Per model (a converted dir, e.g. one per recipe), each workload in a fresh process: T3 prefill and
decode tokens/s with and without CFG, S3Gen time and RTF for N tokens, end-to-end time, streaming
time to first audio, the Perth watermark's share of both, peak RSS.
Warm-up, repeats and medians are in bench.worker.
"""

import argparse
import json

from bench.common import machine, run_worker

WORKLOADS = [("t3", 0.5), ("t3", 0.0), ("s3gen", 0.5), ("e2e", 0.5), ("stream", 0.5)]


def measure(model: str, tokens: int, repeats: int) -> dict:
    out = {}
    for workload, cfg in WORKLOADS:
        r = run_worker("bench.worker", [model, "--workload", workload, "--tokens", tokens, "--cfg", cfg,
                                        "--repeats", repeats])
        name = workload if workload != "t3" else ("t3_cfg" if cfg else "t3_no_cfg")
        out[name] = {k: r[k] for k in ("prefill_s", "decode_tok_s", "s3gen_s", "total_s", "ttfa_s", "watermark_s",
                                                       "peak_rss_mb") if k in r}
        if "s3gen_s" in r:
            out[name]["rtf"] = r["s3gen_s" if workload == "s3gen" else "total_s"] / r["audio_s"]
        if "watermark_s" in r:  # the finishing step's share of end-to-end time
            out[name]["watermark_share"] = r["watermark_s"] / r["total_s"]
        out["recipe"] = r["recipe"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", action="append", required=True, help="converted model dir (repeatable)")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = {"machine": machine(), "tokens": args.tokens,
              "models": {m: measure(m, args.tokens, args.repeats) for m in args.model}}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
