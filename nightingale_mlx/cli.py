"""`nightingale` command line: one subcommand per job, one-line errors (traceback with --debug).

Exit codes: 0 success, 1 error (one line on stderr), 2 bad command-line usage, 130 interrupted.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

from . import __version__

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def _ensure_fast_blas(argv) -> None:
    """MLX's Linux CPU wheel links a ~45x slower reference BLAS: re-exec with OpenBLAS preloaded
    when it is installed, or say how to install it."""
    if not sys.platform.startswith("linux") or os.environ.get("NIGHTINGALE_BLAS_CHECKED"):
        return
    os.environ["NIGHTINGALE_BLAS_CHECKED"] = "1"
    if "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    if os.path.exists(OPENBLAS):
        env = {**os.environ, "LD_PRELOAD": f"{OPENBLAS} {os.environ.get('LD_PRELOAD', '')}".strip()}
        os.execve(sys.executable, [sys.executable, "-m", "nightingale_mlx", *argv], env)
    print("nightingale: note: MLX on Linux is much faster with OpenBLAS: "
          "apt-get install libopenblas0-pthread", file=sys.stderr)


def _read_text(args) -> str:
    if args.file:
        return Path(args.file).read_text(encoding="utf-8")
    if args.text is not None:
        return args.text
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise ValueError("no text: pass TEXT, -f FILE, or pipe text on stdin")


def default_output(text: str) -> Path:
    """A file name from the first words of the text, e.g. hello-world.wav, never overwriting."""
    words = re.findall(r"\w+", text.lower())[:5]
    stem = "-".join(words)[:40].strip("-") or "speech"
    path, n = Path(f"{stem}.wav"), 1
    while path.exists():
        n += 1
        path = Path(f"{stem}-{n}.wav")
    return path


def _load(args):
    from .loader import load

    return load(args.model, variant=args.variant, quantize=args.quantize, profile=getattr(args, "profile", None))


def _writable(path: Path) -> Path:
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write {path}: {path.parent} is not a writable directory")
    return path


def _speak(args) -> None:
    text = _read_text(args)
    out = _writable(Path(args.output) if args.output else default_output(text))  # fail before the work
    tts = _load(args)
    verbose = not args.json and sys.stderr.isatty()

    def progress(i, n, sentence):
        if n > 1 and verbose:
            print(f"[{i + 1}/{n}] {sentence[:70]}", file=sys.stderr)

    sampling = {k: getattr(args, k) for k in ("temperature", "cfg_weight", "repetition_penalty", "min_p", "top_p")}
    if getattr(args, "stream", False):
        return _speak_stream(args, text, out, tts, sampling)
    audio = tts.generate(text, language=args.language, voice=args.voice, exaggeration=args.exaggeration,
                         seed=args.seed, max_new_tokens=args.max_new_tokens, progress=progress, **sampling)
    audio.save(out)
    if args.json:
        print(json.dumps({"output": str(out), "sample_rate": audio.sample_rate, **audio.info}))
    else:
        print(f"nightingale: wrote {out} ({audio.duration:.2f} s, RTF {audio.info['rtf']:.2f})", file=sys.stderr)
    if args.play:
        from .audio.clip import PlaybackError

        try:
            audio.play()
        except PlaybackError as e:
            print(f"nightingale: {e}; the audio is in {out}", file=sys.stderr)


def _speak_stream(args, text, out, tts, sampling) -> None:
    """speak --stream: chunks go to the speaker as they arrive (--play) and to OUT at the end."""
    import contextlib

    import numpy as np

    from .audio.clip import Audio, PlaybackError

    player = contextlib.nullcontext()
    if args.play:
        from .audio.stream_player import StreamPlayer

        try:
            player = StreamPlayer(tts.sample_rate)
        except PlaybackError as e:
            print(f"nightingale: {e}; writing {out} only", file=sys.stderr)
    chunks, first = [], None
    with player as p:
        for chunk in tts.stream(text, language=args.language, voice=args.voice, exaggeration=args.exaggeration,
                                seed=args.seed, max_new_tokens=args.max_new_tokens, **sampling):
            first = chunk.audio_ready_s if first is None else first
            chunks.append(chunk.samples)
            if p is not None:
                p.write(chunk.samples)
    audio = Audio(np.concatenate(chunks).astype(np.float32), tts.sample_rate)
    audio.save(out)
    info = {"output": str(out), "sample_rate": audio.sample_rate, "audio_s": audio.duration, "chunks": len(chunks),
            "ttfa_s": first, "underruns": getattr(getattr(p, "buffer", None), "underruns", None)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"nightingale: wrote {out} ({audio.duration:.2f} s in {len(chunks)} chunks, first audio after "
              f"{first:.2f} s)", file=sys.stderr)


def _voice(args) -> None:
    tts = _load(args)
    voice = tts.prepare_voice(args.reference)
    out = voice.save(args.out)
    print(f"nightingale: voice written to {out}", file=sys.stderr)


def _convert(args) -> None:
    from convert.convert import convert

    out = convert(args.checkpoint, args.out, variant=args.variant, quantize=args.quantize,
                  profile=args.profile, force=args.force)
    print(f"nightingale: converted model written to {out}", file=sys.stderr)
    if args.upload_repo:
        from convert.upload import upload

        url = upload(out, args.upload_repo, source=str(args.checkpoint))
        print(f"nightingale: uploaded to {url}", file=sys.stderr)


def _quality(args) -> None:
    from . import quality

    result = quality.compare(args.model, args.ref, steps=args.steps, text=args.text or quality.DEFAULT_TEXT,
                             language=args.language, seed=args.seed, memory=not args.no_memory)
    print(json.dumps(result, indent=2) if args.json else quality.report(result))


def _export_ios(args) -> None:
    from ios_export.export import export_ios

    text_slots = [int(t) for t in args.text_slots.split(",") if t.strip()]
    out = export_ios(args.model, args.out, target=args.target, context=args.context,
                     text_slots=text_slots, force=args.force, chunk_frames=args.chunk_frames,
                     vocoder_frames=args.vocoder_frames)
    print(f"nightingale: iOS bundle written to {out}", file=sys.stderr)


def _model_args(p, variant_default=None) -> None:
    p.add_argument("-m", "--model", default="ResembleAI/chatterbox",
                   help="converted dir, original checkpoint dir, HF repo id, or 'synthetic' (tiny random model, not speech)")
    p.add_argument("--variant", default=variant_default, choices=["en", "mtl-v2", "mtl-v3"],
                   help="for originals (default mtl-v3)")
    p.add_argument("--quantize", default=None, metavar="RECIPE",
                   help="for originals: fp32|fp16|q8|q4|per-component (default: q8 on Metal, fp32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nightingale", description="Chatterbox TTS on Apple Silicon with MLX")
    p.add_argument("--version", action="version", version=f"nightingale-mlx {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("speak", help="text to speech")
    s.add_argument("text", nargs="?", help="text to speak (or -f FILE, or stdin)")
    s.add_argument("-f", "--file", help="read the text from a file")
    _model_args(s)
    s.add_argument("-l", "--language", default="en", help="language code (en, fr, zh, ...; 23 supported)")
    s.add_argument("--voice", help="reference wav to clone, a baked voice .safetensors, or a voice name")
    s.add_argument("-o", "--output", help="output .wav or .flac (default: from the text)")
    s.add_argument("--play", action="store_true", help="also play the audio (needs the [playback] extra)")
    s.add_argument("--stream", action="store_true", help="synthesize in chunks; with --play, hear it as it comes")
    s.add_argument("--seed", type=int, help="make the output reproducible")
    s.add_argument("--profile", choices=["upstream", "compat-0.1.7"], help="behaviour profile")
    s.add_argument("--exaggeration", type=float, default=0.5)
    s.add_argument("--temperature", type=float)
    s.add_argument("--cfg-weight", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--min-p", type=float)
    s.add_argument("--top-p", type=float)
    s.add_argument("--max-new-tokens", type=int, help="speech tokens per sentence (25 per second)")
    s.add_argument("--json", action="store_true", help="print timings and RTF as JSON")
    s.set_defaults(func=_speak)

    v = sub.add_parser("voice", help="clone a voice once and save it for reuse")
    v.add_argument("reference", help="reference recording (any format soundfile reads)")
    v.add_argument("--out", required=True, help="output voice .safetensors")
    _model_args(v)
    v.set_defaults(func=_voice)

    c = sub.add_parser("convert", help="convert an original Chatterbox checkpoint to MLX")
    c.add_argument("--checkpoint", required=True, help="checkpoint dir or Hugging Face repo id (ResembleAI/chatterbox)")
    c.add_argument("--out", required=True, help="output model dir")
    c.add_argument("--variant", default="auto", choices=["auto", "en", "mtl-v2", "mtl-v3"])
    c.add_argument("--quantize", default="fp32", metavar="RECIPE",
                   help="fp32|fp16|q8|q4, or per component: t3=4,flow=8,hift=16,cloning=16,group=64")
    c.add_argument("--profile", default="upstream", choices=["upstream", "compat-0.1.7"])
    c.add_argument("--force", action="store_true", help="replace OUT if it exists")
    c.add_argument("--upload-repo", metavar="ORG/NAME", help="also publish the converted model to the hub")
    c.set_defaults(func=_convert)

    x = sub.add_parser("export-ios", help="export a converted model as a Core ML bundle for iOS (needs [coreml])")
    x.add_argument("-m", "--model", required=True, help="converted model dir (nightingale convert)")
    x.add_argument("--out", required=True, help="output bundle, NAME.nightingale")
    x.add_argument("--target", default="gpu", choices=["gpu", "ane"],
                   help="gpu: blockwise-quantized flow with fp32 islands; ane: fp16 flow for the Neural Engine")
    x.add_argument("--context", type=int, default=1024, help="T3 KV-cache length (multiple of 32)")
    x.add_argument("--text-slots", default="64,256", help="T3 prefill text lengths, comma-separated")
    x.add_argument("--chunk-frames", type=int, default=156,
                   help="flow window in mel frames, 2 per token (default 156: 50 context + 25 new + 3 lookahead)")
    x.add_argument("--vocoder-frames", type=int, default=88,
                   help="HiFT window in mel frames (default 88: 24 context + 14 held back + 50 new)")
    x.add_argument("--force", action="store_true", help="replace OUT if it exists")
    x.set_defaults(func=_export_ios)

    q = sub.add_parser("quality", help="measure a quantized model against its fp32 conversion")
    q.add_argument("-m", "--model", required=True, help="converted dir to measure (e.g. a q4 conversion)")
    q.add_argument("--ref", required=True, help="fp32 conversion of the same checkpoint")
    q.add_argument("--steps", type=int, default=50, help="T3 teacher-forced steps (speech tokens)")
    q.add_argument("--text", help="text whose speech tokens are compared (default: a fixed sentence)")
    q.add_argument("-l", "--language", default="en")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    q.add_argument("--json", action="store_true", help="print the full result as JSON")
    q.set_defaults(func=_quality)
    return p


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _ensure_fast_blas(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if args.debug:
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"nightingale: error: {message}", file=sys.stderr)
        sys.exit(1)
