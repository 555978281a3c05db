"""`nightingale serve`: its flags, the checks before the model loads, the port, and uvicorn."""

import ipaddress
import os
import socket
import sys
from pathlib import Path

REQUIREMENTS = ("fastapi", "uvicorn", "multipart", "av")


def check_installed() -> None:
    """A one-line error naming the extra when the server's libraries are missing."""
    import importlib.util

    missing = [m for m in REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"nightingale serve needs {', '.join(missing)}: pip install 'nightingale-mlx[server]'")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket's address, taken before the model loads: a busy port fails at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") from None
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(app, sock: socket.socket, quiet: bool) -> None:
    """Serves until Ctrl-C / SIGTERM; requests in flight get a few seconds to finish."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning" if quiet else "info", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    print(f"nightingale: serving on {url(sock)} (web page at /, OpenAI API at /v1)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])


def add_arguments(w) -> None:
    """The serve subcommand's own flags (the model flags are every command's)."""
    w.add_argument("--profile", choices=["upstream", "compat-0.1.7"], help="behaviour profile")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    w.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed at start)")
    w.add_argument("--voices", metavar="DIR", help="baked voices to offer by name; uploads are stored here "
                                                   "(default: voices/ in the model cache)")
    w.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $NIGHTINGALE_API_KEY, else none)")
    w.add_argument("--queue-size", type=int, default=16, help="requests that may wait for the model; more get 429")
    w.add_argument("--max-upload-mb", type=float, default=20, help="largest voice upload, in MiB")
    w.add_argument("--first-chunk-tokens", type=int, default=12, help="speech tokens before the first audio chunk")
    w.add_argument("--chunk-tokens", type=int, default=25, help="speech tokens per later chunk (25 = 1 s)")
    w.add_argument("--max-new-tokens", type=int, help="cap on speech tokens per sentence for every request (bounds "
                                                      "each request's work; a request may ask for fewer)")


def serve(args, load) -> None:
    """Checks the set-up, binds the port, then loads (LOAD(args)) and warms the model and serves."""
    from ..loader import cache_root
    from ..streaming import check_chunk_sizes

    check_installed()
    check_chunk_sizes(args.first_chunk_tokens, args.chunk_tokens)
    if args.queue_size < 1 or args.max_upload_mb <= 0 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise ValueError("--queue-size and --max-new-tokens must be >= 1, --max-upload-mb > 0")
    voices = Path(args.voices).expanduser() if args.voices else None
    if voices is not None and not voices.is_dir():
        raise ValueError(f"--voices {args.voices}: no such directory (create it first)")
    api_key = args.api_key or os.environ.get("NIGHTINGALE_API_KEY") or None
    sock = bind(args.host, args.port)  # before the model loads: a busy port fails at once
    if not is_loopback(args.host) and not api_key:
        print(f"nightingale: warning: listening on {args.host} without --api-key: anyone who reaches this port "
              "can use the model", file=sys.stderr)
    tts = load(args)
    for _ in tts.stream("Hello.", max_new_tokens=4, seed=0):  # compile and warm the caches before the first client
        pass
    from .app import create_app

    app = create_app(tts, voices_dir=voices or cache_root() / "voices", api_key=api_key, max_queue=args.queue_size,
                     max_upload_bytes=int(args.max_upload_mb * (1 << 20)), first_chunk_tokens=args.first_chunk_tokens,
                     chunk_tokens=args.chunk_tokens, max_new_tokens=args.max_new_tokens)
    run(app, sock, quiet=args.quiet)
