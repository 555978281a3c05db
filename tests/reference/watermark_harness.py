"""Perth watermark parity on the REAL trained weights: ours (MLX) against resemble-perth 1.0.1.

Both sides load the checkpoint shipped in the resemble-perth wheel; the inputs are real speech
from espeak-ng (several languages and voices; `apt-get install espeak-ng`) and one output of our
pipeline (the synthetic model, unmarked). For every clip:
- ours vs the reference's watermarked audio: SNR >= 40 dB;
- the reference's detector finds our mark, ours finds the reference's (score >= 0.5), and our
  streamed mark (1 s pushes); neither finds one on the clean clip;
- robustness, the same attacks on both implementations' outputs, scored by both detectors:
  MP3 at 64 kbps (PyAV) and resampling to 16 kHz and back (soxr).

    python -m tests.reference.watermark_harness [--write-fixture] [--json OUT]

`--write-fixture` stores three clips, the reference's marks and scores in
tests/fixtures/watermark_perth.npz (16-bit samples; the reference ran on exactly those values),
which tests/test_watermark.py checks without torch.
"""

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nightingale_mlx import watermark as wm
from nightingale_mlx.audio.resample import resample_soxr

from .parity import FIXTURES, run_ref

SR = 24000
FIXTURE = FIXTURES / "watermark_perth.npz"
FIXTURE_CLIPS = ("en_f3", "fr", "de_m3")
# (name, espeak-ng voice, text): 7 languages, male and female variants.
SPEECH = [
    ("en", "en-us", "The quick brown fox jumps over the lazy dog."),
    ("en_f3", "en-us+f3", "Please call Stella and ask her to bring these things."),
    ("fr", "fr", "Bonjour tout le monde, il fait beau aujourd'hui."),
    ("de_m3", "de+m3", "Guten Tag, wie geht es Ihnen heute?"),
    ("es_f2", "es+f2", "Hola a todos, hoy hace buen tiempo en Madrid."),
    ("it", "it", "La vita è bella quando si canta insieme."),
    ("ja", "ja", "今日はとても良い天気ですね。"),
    ("zh_f4", "cmn+f4", "今天天气很好，我们去公园散步吧。"),
]
SNR_MIN_DB = 40.0


def quantize(x: np.ndarray) -> np.ndarray:
    """16-bit values as float32: what the fixture can store exactly."""
    return (np.round(np.clip(x, -1, 1) * 32767).astype(np.int16) / np.float32(32767)).astype(np.float32)


def espeak(voice: str, text: str) -> np.ndarray:
    import soundfile as sf

    try:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    except FileNotFoundError:
        sys.exit("watermark_harness: needs espeak-ng for real speech (apt-get install espeak-ng)")
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return quantize(resample_soxr(samples, rate, SR))


def pipeline_clip(work: Path) -> np.ndarray:
    """Our pipeline's output (the synthetic model: random weights, so not speech), unmarked."""
    import nightingale_mlx as ng
    from nightingale_mlx.synthetic import synthetic_model

    tts = ng.TTS(synthetic_model(work / "synthetic"))
    audio = tts.generate("Hello from the pipeline.", seed=0, max_new_tokens=60, watermark=False)
    return quantize(audio.samples)


def make_clips(work: Path) -> dict:
    clips = {name: espeak(voice, text) for name, voice, text in SPEECH}
    clips["pipeline"] = pipeline_clip(work)
    return clips


# --- attacks (the same for both implementations) -------------------------------------------------

def mp3(x: np.ndarray, sr: int = SR, bitrate: int = 64000) -> np.ndarray:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("mp3", rate=sr)
        stream.bit_rate = bitrate
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as inp:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in inp.decode(audio=0)])
    return pcm.astype(np.float32)


def resample_16k(x: np.ndarray, sr: int = SR) -> np.ndarray:
    return resample_soxr(resample_soxr(x, sr, 16000), 16000, sr)


ATTACKS = {"none": lambda x: x, "mp3_64k": mp3, "resample_16k": resample_16k}


def snr_db(ref: np.ndarray, ours: np.ndarray) -> float:
    n = min(len(ref), len(ours))
    return float(10 * np.log10(np.sum(ref[:n] ** 2) / max(np.sum((ours[:n] - ref[:n]) ** 2), 1e-30)))


def stream_mark(marker: wm.Watermarker, x: np.ndarray, first: int = 4800, size: int = SR) -> np.ndarray:
    s, out, i = wm.WatermarkStream(marker, SR), [], 0
    for n in [first] + [size] * (len(x) // size + 1):
        piece, i = x[i : i + n], i + n
        out.append(s.push(piece, last=i >= len(x)))
        if i >= len(x):
            break
    return np.concatenate(out)


def run(work: Path) -> dict:
    marker = wm.load()
    if marker is None:
        sys.exit("watermark_harness: resemble-perth is not installed here (pip install -e '.[dev]')")
    clips = make_clips(work)
    run_ref("ref_watermark.py", "--inputs", _save(work / "in.npz", {f"mark/{k}": v for k, v in clips.items()}),
            "--out", work / "ref.npz")
    ref = dict(np.load(work / "ref.npz"))
    ours = {k: marker.embed(v, SR) for k, v in clips.items()}
    streamed = {k: stream_mark(marker, v) for k, v in clips.items()}
    attacked = {}
    for attack, fn in ATTACKS.items():
        for k in clips:
            attacked[f"{attack}/ref/{k}"] = fn(ref[f"marked/{k}"])
            attacked[f"{attack}/ours/{k}"] = fn(ours[k])
    attacked.update({f"stream/ours/{k}": v for k, v in streamed.items()})
    attacked.update({f"clean_mp3/{k}": mp3(v) for k, v in clips.items()})
    run_ref("ref_watermark.py", "--inputs", _save(work / "in2.npz", {f"score/{k}": v for k, v in attacked.items()}),
            "--out", work / "ref2.npz")
    ref2 = dict(np.load(work / "ref2.npz"))

    per_clip = {}
    for k, x in clips.items():
        per_clip[k] = {
            "seconds": round(len(x) / SR, 2),
            # Our outputs are clipped to full scale (the reference leaves that to the file writer).
            "snr_ours_vs_ref_db": snr_db(np.clip(ref[f"marked/{k}"], -1, 1), ours[k]),
            "snr_ours_vs_unclipped_ref_db": snr_db(ref[f"marked/{k}"], ours[k]),
            "ref_peak": float(np.abs(ref[f"marked/{k}"]).max()),
            "mark_snr_db": snr_db(x, ours[k]),  # how loud the mark itself is
            "ref_detector": {"clean": float(ref[f"score/{k}"]), "ref": float(ref[f"score/marked/{k}"]),
                             "ours": float(ref2[f"score/none/ours/{k}"]), "ours_stream": float(ref2[f"score/stream/ours/{k}"]),
                             "clean_mp3": float(ref2[f"score/clean_mp3/{k}"])},
            "our_detector": {"clean": marker.detect(x, SR), "ref": marker.detect(ref[f"marked/{k}"], SR),
                             "ours": marker.detect(ours[k], SR), "ours_stream": marker.detect(streamed[k], SR),
                             "clean_mp3": marker.detect(attacked[f"clean_mp3/{k}"], SR)},
        }
    robustness = {}
    for attack in ATTACKS:
        for made in ("ref", "ours"):
            for det in ("ref", "ours"):
                scores = [float(ref2[f"score/{attack}/{made}/{k}"]) if det == "ref"
                          else marker.detect(attacked[f"{attack}/{made}/{k}"], SR) for k in clips]
                robustness[f"{attack}: marked by {made}, {det} detector"] = {
                    "detected": f"{sum(s >= wm.THRESHOLD for s in scores)}/{len(scores)}",
                    "min_score": round(min(scores), 3), "mean_score": round(float(np.mean(scores)), 3)}
    checks = []
    for k, c in per_clip.items():
        checks += [(f"{k}: ours vs ref (clipped to +-1) SNR >= {SNR_MIN_DB} dB", c["snr_ours_vs_ref_db"] >= SNR_MIN_DB),
                   (f"{k}: ref detector finds our mark", c["ref_detector"]["ours"] >= wm.THRESHOLD),
                   (f"{k}: ref detector finds our streamed mark", c["ref_detector"]["ours_stream"] >= wm.THRESHOLD),
                   (f"{k}: our detector finds the ref's mark", c["our_detector"]["ref"] >= wm.THRESHOLD),
                   (f"{k}: our detector finds our mark", c["our_detector"]["ours"] >= wm.THRESHOLD),
                   (f"{k}: neither finds a mark on the clean clip",
                    max(c["ref_detector"]["clean"], c["our_detector"]["clean"]) < wm.THRESHOLD)]
    result = {"clips": per_clip, "robustness": robustness,
              "checks": [{"name": n, "ok": bool(ok)} for n, ok in checks]}
    return result, clips, ref


def _save(path: Path, arrays: dict) -> Path:
    rates = {f"rate/{k.split('/', 1)[1]}": np.int64(SR) for k in arrays}
    np.savez(path, **arrays, **rates)
    return path


def write_fixture(clips: dict, ref: dict) -> None:
    pcm = lambda x: np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)  # noqa: E731
    arrays = {}
    for k in FIXTURE_CLIPS:
        arrays[f"clean/{k}"] = pcm(clips[k])
        arrays[f"ref_marked/{k}"] = pcm(ref[f"marked/{k}"])
        arrays[f"ref_score_clean/{k}"] = np.float32(ref[f"score/{k}"])
        arrays[f"ref_score_marked/{k}"] = np.float32(ref[f"score/marked/{k}"])
    arrays["sample_rate"] = np.int64(SR)
    arrays["source"] = np.array("resemble-perth 1.0.1 PerthImplicitWatermarker, perth_net_250000; espeak-ng speech")
    np.savez_compressed(FIXTURE, **arrays)
    print(f"watermark_harness: wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-fixture", action="store_true")
    p.add_argument("--json", help="also write the full result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result, clips, ref = run(Path(tmp))
    if args.write_fixture:
        write_fixture(clips, ref)
    for name, c in result["clips"].items():
        print(f"{name:9s} {c['seconds']:5.2f}s  ours-vs-ref {c['snr_ours_vs_ref_db']:6.1f} dB"
              f" (unclipped {c['snr_ours_vs_unclipped_ref_db']:6.1f}, ref peak {c['ref_peak']:.2f})  mark {c['mark_snr_db']:5.1f} dB"
              f"  ref det: clean {c['ref_detector']['clean']:.3f} ours {c['ref_detector']['ours']:.3f}"
              f" stream {c['ref_detector']['ours_stream']:.3f}  our det: clean {c['our_detector']['clean']:.3f}"
              f" ref {c['our_detector']['ref']:.3f}")
    for name, r in result["robustness"].items():
        print(f"{name:45s} detected {r['detected']}  min {r['min_score']:.3f}  mean {r['mean_score']:.3f}")
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    print(f"watermark parity: {len(result['checks']) - len(failed)}/{len(result['checks'])} checks pass"
          + (": FAILED " + "; ".join(failed) if failed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
