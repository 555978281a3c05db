"""What every command checks before it loads a model: its input text and its output path.

One rule for all commands: an output's directory must already exist and be writable (nothing is
created for you), and an existing output is replaced only with --force. Also the SHA-256 that
the batch manifest and the iOS bundle's record of each file they wrote.
"""

import hashlib
import sys
import tempfile
from pathlib import Path

AUDIO_FORMATS = (".wav", ".flac")


class OutputError(ValueError):
    """An output path that cannot be written; raised before any work starts."""


def _check_parent(path: Path) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is not a writable directory (it is a file)")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} does not exist (create it first)")
    try:  # the honest test: os.access says yes for root even where nothing can be created (/proc)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {path}: {parent} is not a writable directory ({e.strerror})") from None


def check_output_file(path, suffixes, force: bool) -> Path:
    """A file OUT with one of SUFFIXES that this process can create (or replace, with force)."""
    if str(path) == "-":
        raise OutputError("-o -: writing to stdout is not supported; give a file name like speech.wav")
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name like {path / ('speech' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{path}: unsupported output format {path.suffix or '(no extension)'!r}; "
                          f"use {' or '.join(suffixes)}")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to replace it")
    _check_parent(path)
    return path


def check_output_dir(path, force: bool) -> Path:
    """A directory OUT that does not exist yet (or is replaced, with force) in a writable parent."""
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a directory")
    _check_parent(path)
    return path


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_utf8(path, name: str, directory: str, error: type = ValueError, refuse_binary: bool = False) -> str:
    """A text file's UTF-8 contents, or one line (`error`) that calls it `name` and says what to do;
    `directory` ends the line for a directory, `refuse_binary` refuses a file with NUL bytes."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except IsADirectoryError:
        raise error(f"{name}: is a directory{directory}") from None
    except OSError as e:
        raise error(f"{name}: cannot read it ({e.strerror})") from None
    if refuse_binary and b"\0" in data:
        raise error(f"{name}: is a binary file, not text; give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{name}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                    "save it as UTF-8") from None


def read_text(text, file) -> str:
    """TEXT, or the UTF-8 text of FILE, or stdin when it is piped; exactly one of them."""
    if text is not None and file:
        raise ValueError("give the text or -f FILE, not both")
    if file:
        return read_utf8(file, f"-f {file}", ", not a text file", refuse_binary=True)
    if text is not None:
        return text
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise ValueError("no text: pass TEXT, -f FILE, or pipe text on stdin")
