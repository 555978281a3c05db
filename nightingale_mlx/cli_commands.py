"""`nightingale batch` and `nightingale vc`: what the two commands do once parsed (cli.py declares
every command's flags; these import its shared steps when they run, as cli.py imports this module).
"""

import json
import sys
from pathlib import Path

from . import progress
from .outputs import AUDIO_FORMATS, check_output_dir, check_output_file


def batch(args) -> None:
    """Many items (JSONL, or a book's chapters) -> DIR/<id>.<format> and DIR/manifest.jsonl; resumable."""
    from .batch import read_items
    from .batch.runner import BatchError, Job, check_format, local_results, report, run
    from .cli import _recipe

    items = read_items(args.input)  # before the work, as every input and output check
    check_format(args.format)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a directory (it is created, or resumed if it exists)")
    if not out.exists():
        check_output_dir(out, force=False)
    executor = local_results
    if args.ray is not None:
        from .batch import ray_backend

        executor = ray_backend.executor(args.ray, args.workers)
    sampling = ("exaggeration", "temperature", "cfg_weight", "repetition_penalty", "min_p", "top_p", "top_k",
                "max_new_tokens")
    defaults = {k: getattr(args, k) for k in ("voice", "language", "seed", *sampling) if getattr(args, k) is not None}
    name = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model  # for Ray workers too
    model = {"model": name, "variant": args.variant, "quantize": _recipe(args), "profile": args.profile}
    if args.model == "synthetic":  # built here once, not by several workers at the same time
        from .loader import resolve_model

        resolve_model(args.model, args.variant, model["quantize"])
    job = Job(items, out, args.format, model, defaults, watermark=not args.no_watermark)
    try:
        summary = run(job, executor, show=progress.enabled(args.quiet or args.json))
    except KeyboardInterrupt:
        print(f"nightingale: interrupted; finished items are kept in {out}; run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        report(summary)
    if summary["failed"]:
        shown = ", ".join(summary["failed_ids"][:5]) + (", ..." if summary["failed"] > 5 else "")
        raise BatchError(f"{summary['failed']} of {summary['items']} items failed ({shown}); their errors are in "
                         f"{summary['manifest']}")


def vc(args) -> None:
    """vc: the source recording in another voice (TTS.convert_voice), like speak for the rest."""
    from .cli import _deliver, _load, _speak_stream
    from .vc import load_source

    source = Path(args.source)
    stem, n = f"{source.stem}-vc", 1
    default = Path(f"{stem}.wav")
    while args.output is None and default.exists():
        n += 1
        default = Path(f"{stem}-{n}.wav")
    out = check_output_file(args.output or default, AUDIO_FORMATS, args.force)  # before the work
    wav16 = load_source(source)  # a bad source is one line before the model loads
    tts = _load(args)
    show = progress.enabled(args.quiet or args.json)
    if args.stream:
        stream = tts.stream_convert_voice(wav16, args.voice, seed=args.seed, sample_rate=16000,
                                          watermark=not args.no_watermark)
        return _speak_stream(args, None, out, tts, None, show, stream=stream)
    with progress.steps(show, 1, "converting pieces") as bar:
        def piece(i, n, tokens):
            bar.total = n
            bar.update(i - bar.n)
            bar.set_postfix_str(f"{tokens / 25:.1f} s")

        audio = tts.convert_voice(wav16, args.voice, seed=args.seed, sample_rate=16000, progress=piece,
                                  watermark=not args.no_watermark)
        bar.update(bar.total - bar.n)
    _deliver(args, audio, out)
