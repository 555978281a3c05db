"""The reference voice conversion (chatterbox-tts 0.1.7 `ChatterboxVC.generate`) timed, in the reference env.

    $NIGHTINGALE_REF_PYTHON bench/ref_vc_worker.py CKPT_DIR --source S.wav --target T.wav

English files: `ChatterboxVC.from_local`; Turbo/Nano files: ChatterboxVC around `S3Gen(meanflow=True)`
(as tests/reference/ref_vc.py). The Perth watermark is not part of the workload (our port does not
watermark). Prints one JSON line: seconds (generate after one warm-up call, model load excluded), audio_s, rtf, peak RSS.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))

import patches  # noqa: E402
from ref_vc import load  # noqa: E402
from ref_worker import peak_rss_mb  # noqa: E402


def main():
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--target", type=Path, required=True)
    args = p.parse_args()
    manifest = json.loads((args.ckpt / "test_manifest.json").read_text())
    patches.apply_sizes(manifest["size"])
    torch.manual_seed(0)
    vc = load(args.ckpt, manifest["variant"])
    patches.disable_watermark(vc)
    vc.generate(str(args.source), target_voice_path=str(args.target))  # warm-up (librosa/numba first calls)
    start = time.perf_counter()
    wav = vc.generate(str(args.source), target_voice_path=str(args.target))
    seconds = time.perf_counter() - start
    audio_s = wav.shape[-1] / vc.sr
    print(json.dumps({"seconds": seconds, "audio_s": audio_s, "rtf": seconds / audio_s, "peak_rss_mb": peak_rss_mb(),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
