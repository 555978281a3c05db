"""Binding the port and running uvicorn: `nightingale serve` after its model is loaded."""

import ipaddress
import socket
import sys

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
