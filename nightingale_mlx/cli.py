"""`nightingale` command line: one subcommand per job, one-line errors (traceback with --debug).

Exit codes: 0 success, 1 error (one line on stderr), 2 bad command-line usage, 130 interrupted.
"""

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from . import __version__, blas, cli_commands, progress
from .config import VARIANTS
from .outputs import AUDIO_FORMATS, check_output_dir, check_output_file, read_text

VOICE_FORMATS = (".safetensors",)
FORCE_HELP = "replace OUT if it exists (every command refuses to otherwise)"


class _OncePerRun(logging.Filter):
    """Lets each warning (by its message template) through once per run: not once per sentence."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record) -> bool:
        key = (record.name, record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def default_output(text: str) -> Path:
    """A file name from the first words of the text, e.g. hello-world.wav, never overwriting."""
    words = re.findall(r"\w+", text.lower())[:5]
    stem = "-".join(words)[:40].strip("-") or "speech"
    path, n = Path(f"{stem}.wav"), 1
    while path.exists():
        n += 1
        path = Path(f"{stem}-{n}.wav")
    return path


def _recipe(args):
    """--quantize checked before any work: a typo is an error, never silently ignored."""
    if args.quantize is not None:
        from .quant import Recipe

        try:
            Recipe.parse(args.quantize)
        except ValueError as e:
            raise ValueError(f"--quantize {args.quantize}: {e} (fp32|fp16|q8|q4 or t3=4,flow=8,...)") from None
    return args.quantize


def _model_dir(name: str) -> str:
    """A converted dir by name: 'synthetic' is the English fp32 synthetic model, built on first use."""
    if name != "synthetic":
        return name
    from .loader import resolve_model

    return str(resolve_model(name))


def _load(args):
    from .loader import load

    return load(args.model, variant=args.variant, quantize=_recipe(args), profile=getattr(args, "profile", None))


def _speak(args) -> None:
    text = read_text(args.text, args.file)
    out = check_output_file(args.output or default_output(text), AUDIO_FORMATS, args.force)  # before the work
    tts = _load(args)
    show = progress.enabled(args.quiet or args.json)
    sampling = {k: getattr(args, k) for k in ("temperature", "cfg_weight", "repetition_penalty", "min_p", "top_p",
                                              "top_k")}
    if getattr(args, "stream", False):
        return _speak_stream(args, text, out, tts, sampling, show)
    bar = progress.SpeechProgress(show)
    progress.count_tokens(tts, bar)
    try:
        audio = tts.generate(text, language=args.language, voice=args.voice, exaggeration=args.exaggeration,
                             seed=args.seed, max_new_tokens=args.max_new_tokens, progress=bar.sentence,
                             watermark=not args.no_watermark, **sampling)
    finally:
        bar.close()
    _deliver(args, audio, out)


def _deliver(args, audio, out) -> None:
    """speak / vc: write OUT, report (a line, or --json), then --play."""
    audio.save(out, float32=args.float)
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


def _speak_stream(args, text, out, tts, sampling, show, stream=None) -> None:
    """speak --stream: chunks go to the speaker as they arrive (--play) and to OUT at the end.
    `stream`: another iterator of AudioChunks to handle the same way (vc --stream).

    On Ctrl-C what was already made (and heard) is kept in OUT as a valid file.
    """
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
    chunks, first, bar = [], None, progress.SpeechProgress(show)
    interrupted = False
    try:
        with player as p:
            for chunk in stream or tts.stream(text, language=args.language, voice=args.voice,
                                              exaggeration=args.exaggeration, seed=args.seed,
                                              max_new_tokens=args.max_new_tokens,
                                              watermark=not args.no_watermark, **sampling):
                first = chunk.audio_ready_s if first is None else first
                chunks.append(chunk.samples)
                bar.audio(sum(len(c) for c in chunks) / tts.sample_rate)
                if p is not None:
                    p.write(chunk.samples)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted and not chunks:
        raise KeyboardInterrupt
    audio = Audio(np.concatenate(chunks).astype(np.float32), tts.sample_rate)
    audio.save(out, float32=args.float)
    if interrupted:
        print(f"nightingale: interrupted; kept the {audio.duration:.2f} s made so far in {out}", file=sys.stderr)
        sys.exit(130)
    info = {"output": str(out), "sample_rate": audio.sample_rate, "audio_s": audio.duration, "chunks": len(chunks),
            "ttfa_s": first, "underruns": getattr(getattr(p, "buffer", None), "underruns", None)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"nightingale: wrote {out} ({audio.duration:.2f} s in {len(chunks)} chunks, first audio after "
              f"{first:.2f} s)", file=sys.stderr)


def _voice(args) -> None:
    out = check_output_file(args.out, VOICE_FORMATS, args.force)
    tts = _load(args)
    voice = tts.prepare_voice(args.reference)
    voice.save(out)
    print(f"nightingale: voice written to {out}", file=sys.stderr)


def _convert(args) -> None:
    from convert.convert import STEPS, convert

    from .synthetic import COMPONENTS as SYNTHETIC_COMPONENTS, convert_synthetic

    out = check_output_dir(args.out, args.force)
    _recipe(args)
    synthetic = args.checkpoint == "synthetic"
    total = len(SYNTHETIC_COMPONENTS if synthetic else STEPS)
    with progress.steps(progress.enabled(args.quiet), total, "converting") as bar:
        def step(name):
            bar.set_postfix_str(f"{name} done")
            bar.update()

        if synthetic:
            variant = "en" if args.variant == "auto" else args.variant
            out = convert_synthetic(out, variant, args.quantize, force=args.force, progress=step, profile=args.profile,
                                    watermark=args.watermark)
        else:
            out = convert(args.checkpoint, out, variant=args.variant, quantize=args.quantize,
                          profile=args.profile, force=args.force, progress=step, watermark=args.watermark)
    print(f"nightingale: converted model written to {out}", file=sys.stderr)
    if args.upload_repo:
        from convert.upload import upload

        url = upload(out, args.upload_repo, source=str(args.checkpoint))
        print(f"nightingale: uploaded to {url}", file=sys.stderr)


def _watermark_detect(args) -> None:
    import numpy as np
    import soundfile as sf

    from . import watermark as wm

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile's errors name the format problem
        raise ValueError(f"{path}: not an audio file soundfile can read ({e})") from e
    marker = wm.load_from(args.weights) if args.weights else wm.load()
    if marker is None:
        raise wm.WatermarkError("no Perth watermark weights: pip install resemble-perth, or pass --weights "
                                "(a model dir, watermark.safetensors or perth_net .pth.tar)")
    score = marker.detect(np.mean(samples, axis=1), sr)
    marked = score >= wm.THRESHOLD
    if args.json:
        print(json.dumps({"file": str(path), "score": score, "threshold": wm.THRESHOLD, "watermarked": marked}))
    else:
        verdict = "watermarked" if marked else "no watermark"
        print(f"{path}: {verdict} (Perth score {score:.3f}, threshold {wm.THRESHOLD})")


def _quality(args) -> None:
    from . import quality

    result = quality.compare(_model_dir(args.model), _model_dir(args.ref), steps=args.steps,
                             text=args.text or quality.DEFAULT_TEXT, language=args.language, seed=args.seed,
                             memory=not args.no_memory)
    print(json.dumps(result, indent=2) if args.json else quality.report(result))


def _export_ios(args) -> None:
    from ios_export.export import export_ios

    out = check_output_dir(args.out, args.force)
    text_slots = [int(t) for t in args.text_slots.split(",") if t.strip()]
    model = _model_dir(args.model)
    # The export is one long call without steps to count: the bar shows that it runs and for how long.
    with progress.steps(progress.enabled(args.quiet), 1, "exporting") as bar:
        out = export_ios(model, out, target=args.target, context=args.context, text_slots=text_slots,
                         force=args.force, chunk_frames=args.chunk_frames, vocoder_frames=args.vocoder_frames,
                         cond_slot=args.cond_slot)
        bar.update()
    print(f"nightingale: iOS bundle written to {out}", file=sys.stderr)


def _serve(args) -> None:
    from .server.run import serve

    serve(args, _load)


def _doctor(args) -> None:
    from .doctor import report

    print(report())


def _model_args(p) -> None:
    p.add_argument("-m", "--model", default="ResembleAI/chatterbox",
                   help="converted dir, original checkpoint dir, HF repo id, or 'synthetic' (tiny random model, not speech)")
    p.add_argument("--variant", default=None, choices=list(VARIANTS),
                   help="for originals (default mtl-v3; turbo for ResembleAI/chatterbox-turbo) and 'synthetic' "
                        "(default en; mtl-v3 takes all 23 languages; turbo/nano are the fast GPT-2 models)")
    p.add_argument("--quantize", default=None, metavar="RECIPE",
                   help="for originals and 'synthetic': fp32|fp16|q8|q4|per-component (default: q8 on Metal, fp32 on CPU)")


def _output_args(p, default: str, verb: str, seed_help: str) -> None:
    """speak / vc: where the audio goes and how it comes (_deliver, _speak_stream read these)."""
    p.add_argument("-o", "--output", help=f"output .wav (16-bit) or .flac (default: {default})")
    p.add_argument("--float", action="store_true", help="write a 32-bit float .wav instead of 16-bit PCM")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--play", action="store_true", help="also play the audio (needs the [playback] extra)")
    p.add_argument("--stream", action="store_true", help=f"{verb} in chunks; with --play, hear it as it comes")
    p.add_argument("--seed", type=int, help=seed_help)


def build_parser() -> argparse.ArgumentParser:
    # --debug and --quiet are accepted before or after the subcommand (SUPPRESS keeps the top-level value).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar or notes (they are shown only on a terminal anyway)")
    p = argparse.ArgumentParser(prog="nightingale", description="Chatterbox TTS on Apple Silicon with MLX")
    p.add_argument("--version", action="version", version=f"nightingale-mlx {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("speak", help="text to speech", parents=[common])
    s.add_argument("text", nargs="?", help="text to speak (or -f FILE, or stdin)")
    s.add_argument("-f", "--file", help="read the text from a UTF-8 file")
    _model_args(s)
    s.add_argument("-l", "--language", default="en", help="language code (en, fr, zh, ...; 23 supported)")
    s.add_argument("--voice", help="reference wav to clone, a baked voice .safetensors, or a voice name")
    _output_args(s, "a name from the text", "synthesize", "make the output reproducible (byte-identical files)")
    s.add_argument("--profile", choices=["upstream", "compat-0.1.7"], help="behaviour profile")
    s.add_argument("--exaggeration", type=float, default=0.5)
    s.add_argument("--temperature", type=float)
    s.add_argument("--cfg-weight", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--min-p", type=float)
    s.add_argument("--top-p", type=float)
    s.add_argument("--top-k", type=int, help="Turbo/Nano: keep the k likeliest tokens (default 1000)")
    s.add_argument("--max-new-tokens", type=int, help="speech tokens per sentence (25 per second)")
    s.add_argument("--json", action="store_true", help="print timings and RTF as JSON")
    s.add_argument("--no-watermark", action="store_true",
                   help="leave out the Perth watermark the output carries by default (as the reference's does)")
    s.set_defaults(func=_speak)

    b = sub.add_parser("batch", help="many texts to audio files: a JSONL dataset or a book's chapters, resumable",
                       parents=[common])
    b.add_argument("input", help=".jsonl (one item a line: id, text, optional voice, language, seed, sampling fields) "
                                 "or .txt/.md (one output per chapter, split at headings)")
    b.add_argument("--out", required=True, help="output dir (created; an existing one is resumed)")
    b.add_argument("--format", default="wav", choices=["wav", "flac", "mp3"], help="16-bit wav/flac, or mp3 (needs PyAV)")
    _model_args(b)
    b.add_argument("--profile", choices=["upstream", "compat-0.1.7"], help="behaviour profile")
    b.add_argument("-l", "--language", help="language of items that name none (default en)")
    b.add_argument("--voice", help="voice of items that name none: a reference wav, a baked .safetensors, or a name")
    b.add_argument("--seed", type=int, help="seed of items that name none (default: one derived from each item's id)")
    for name in ("exaggeration", "temperature", "cfg-weight", "repetition-penalty", "min-p", "top-p"):
        b.add_argument(f"--{name}", type=float)
    b.add_argument("--top-k", type=int)
    b.add_argument("--max-new-tokens", type=int, help="speech tokens per piece (25 per second)")
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray (needs [ray]): a new local instance, or the cluster at ADDRESS (host:6379, auto)")
    b.add_argument("--workers", type=int, default=2, help="with --ray: Ray actors, one model each (default 2)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.add_argument("--no-watermark", action="store_true", help="leave out the Perth watermark (on by default)")
    b.set_defaults(func=cli_commands.batch)


    vc = sub.add_parser("vc", help="voice conversion: a recording spoken in another voice", parents=[common])
    vc.add_argument("source", help="the recording to convert (any format soundfile reads, any length)")
    _model_args(vc)
    vc.add_argument("--voice", help="target: reference wav, a baked voice .safetensors, or a voice name "
                                    "(default: the model's built-in voice)")
    _output_args(vc, "SOURCE-vc.wav", "convert", "make the output reproducible")
    vc.add_argument("--json", action="store_true", help="print timings and RTF as JSON")
    vc.add_argument("--no-watermark", action="store_true", help="leave out the Perth watermark (on by default)")
    vc.set_defaults(func=cli_commands.vc)

    v = sub.add_parser("voice", help="clone a voice once and save it for reuse", parents=[common])
    v.add_argument("reference", help="reference recording (any format soundfile reads)")
    v.add_argument("--out", required=True, help="output voice .safetensors")
    v.add_argument("--force", action="store_true", help=FORCE_HELP)
    _model_args(v)
    v.set_defaults(func=_voice)

    c = sub.add_parser("convert", help="convert an original Chatterbox checkpoint to MLX", parents=[common])
    c.add_argument("--checkpoint", required=True,
                   help="checkpoint dir, Hugging Face repo id (ResembleAI/chatterbox), or 'synthetic'")
    c.add_argument("--out", required=True, help="output model dir")
    c.add_argument("--variant", default="auto", choices=["auto", *VARIANTS],
                   help="auto: detected from the files (turbo/nano: their T3 file)")
    c.add_argument("--quantize", default="fp32", metavar="RECIPE",
                   help="fp32|fp16|q8|q4, or per component: t3=4,flow=8,hift=16,cloning=16,group=64")
    c.add_argument("--profile", default="upstream", choices=["upstream", "compat-0.1.7"])
    c.add_argument("--force", action="store_true", help=FORCE_HELP)
    c.add_argument("--upload-repo", metavar="ORG/NAME", help="also publish the converted model to the hub")
    c.add_argument("--watermark", metavar="FILE",
                   help="Perth watermark checkpoint (perth_net_250000.pth.tar; default: the installed resemble-perth's)")
    c.set_defaults(func=_convert)

    wmk = sub.add_parser("watermark", help="Perth watermark tools", parents=[common])
    wsub = wmk.add_subparsers(dest="action", required=True)
    wd = wsub.add_parser("detect", help="does FILE carry the Perth watermark? (score and verdict)", parents=[common])
    wd.add_argument("file", help="audio file (any format soundfile reads; stereo is mixed down)")
    wd.add_argument("--weights", help="a model dir, watermark.safetensors or perth_net .pth.tar "
                                      "(default: the installed resemble-perth's)")
    wd.add_argument("--json", action="store_true", help="print file, score, threshold and verdict as JSON")
    wd.set_defaults(func=_watermark_detect)

    x = sub.add_parser("export-ios", help="export a converted model as a Core ML bundle for iOS (needs [coreml])",
                       parents=[common])
    x.add_argument("-m", "--model", required=True, help="converted model dir (nightingale convert), or 'synthetic'")
    x.add_argument("--out", required=True, help="output bundle, NAME.nightingale")
    x.add_argument("--target", default="gpu", choices=["gpu", "ane"],
                   help="gpu: blockwise-quantized flow with fp32 islands; ane: fp16 flow for the Neural Engine")
    x.add_argument("--context", type=int, default=1024, help="T3 KV-cache length (multiple of 32)")
    x.add_argument("--text-slots", default="64,256", help="T3 prefill text lengths, comma-separated")
    x.add_argument("--chunk-frames", type=int, default=156,
                   help="flow window in mel frames, 2 per token (default 156: 50 context + 25 new + 3 lookahead)")
    x.add_argument("--vocoder-frames", type=int, default=88,
                   help="HiFT window in mel frames (default 88: 24 context + 14 held back + 50 new)")
    x.add_argument("--cond-slot", type=int, default=None,
                   help="Turbo/Nano: T3 prefill conditioning rows (default 376: speaker + 375 prompt tokens)")
    x.add_argument("--force", action="store_true", help=FORCE_HELP)
    x.set_defaults(func=_export_ios)

    q = sub.add_parser("quality", help="measure a quantized model against its fp32 conversion", parents=[common])
    q.add_argument("-m", "--model", required=True, help="converted dir to measure (e.g. a q4 conversion)")
    q.add_argument("--ref", required=True, help="fp32 conversion of the same checkpoint ('synthetic': the synthetic one)")
    q.add_argument("--steps", type=int, default=50, help="T3 teacher-forced steps (speech tokens)")
    q.add_argument("--text", help="text whose speech tokens are compared (default: a fixed sentence)")
    q.add_argument("-l", "--language", default="en")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    q.add_argument("--json", action="store_true", help="print the full result as JSON")
    q.set_defaults(func=_quality)

    w = sub.add_parser("serve", help="an OpenAI-compatible speech server (/v1/audio/speech) and a web page "
                                     "(needs [server])", parents=[common])
    _model_args(w)
    from .server.run import add_arguments

    add_arguments(w)
    w.set_defaults(func=_serve)

    d = sub.add_parser("doctor", help="report the MLX device, versions, cache dir, OpenBLAS and extras",
                       parents=[common])
    d.set_defaults(func=_doctor)
    return p


def main(argv=None) -> None:
    """Runs one command in this process; never re-executes it or changes os.environ (see entry())."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("nightingale: warning: %(message)s"))
    handler.addFilter(_OncePerRun())
    package_log = logging.getLogger("nightingale_mlx")
    package_log.addHandler(handler)
    package_log.propagate = False  # our one-line format, not the root logger's
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("nightingale: interrupted; nothing written", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, nothing cut
        print(f"nightingale: error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        package_log.removeHandler(handler)
        package_log.propagate = True
    if not args.quiet and args.command != "doctor":
        from .loader import cache_root

        blas.note_once(cache_root())


def entry() -> None:
    """The console script (and `python -m nightingale_mlx`): preload OpenBLAS on Linux, then main()."""
    blas.reexec_with_openblas(sys.argv[1:])
    main()
