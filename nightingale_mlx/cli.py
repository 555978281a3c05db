"""`nightingale` command line: one subcommand per job, one-line errors (traceback with --debug)."""

import argparse
import sys

from . import __version__


def _convert(args) -> None:
    from convert.convert import convert

    out = convert(
        args.checkpoint,
        args.out,
        variant=args.variant,
        quantize=args.quantize,
        profile=args.profile,
        force=args.force,
    )
    print(f"nightingale: converted model written to {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nightingale", description="Chatterbox TTS on Apple Silicon with MLX")
    p.add_argument("--version", action="version", version=f"nightingale-mlx {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an original Chatterbox checkpoint to MLX")
    c.add_argument("--checkpoint", required=True, help="checkpoint dir or Hugging Face repo id (ResembleAI/chatterbox)")
    c.add_argument("--out", required=True, help="output model dir")
    c.add_argument("--variant", default="auto", choices=["auto", "en", "mtl-v2", "mtl-v3"])
    c.add_argument("--quantize", default="fp32", metavar="RECIPE",
                   help="fp32|fp16|q8|q4, or per component: t3=4,flow=8,hift=16,cloning=16,group=64")
    c.add_argument("--profile", default="upstream", choices=["upstream", "compat-0.1.7"])
    c.add_argument("--force", action="store_true", help="replace OUT if it exists")
    c.set_defaults(func=_convert)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if args.debug:
            raise
        print(f"nightingale: error: {e}", file=sys.stderr)
        sys.exit(1)
