"""manifest.jsonl: one line per finished item, appended as it finishes; the record a rerun resumes from.

An item counts as done only if its last line says ok, was made with the same request (text, voice,
seed, sampling, model, format) and its file is there with the size and SHA-256 the line records.
Every file is written under a temp name and renamed, and its line is appended (and fsynced) after
the rename: a kill loses at most the item in flight. On start the manifest is rewritten without
torn, superseded or stale lines, and temp files of a killed run are removed.
"""

import fcntl
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional

from ..outputs import file_sha256

MANIFEST = "manifest.jsonl"
TEMP_PREFIX = ".partial-"


class BatchLockedError(RuntimeError):
    """Another batch run is writing the same directory."""


def write_atomic(path: Path, data: bytes) -> None:
    """DATA -> PATH through a temp file in the same directory, fsynced, then renamed over it."""
    tmp = path.with_name(TEMP_PREFIX + path.name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Manifest:
    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.path = self.dir / MANIFEST
        self._lock = None

    def lock(self) -> None:
        """Holds the directory for this run (released when the process ends, even if killed)."""
        self._lock = os.open(self.dir, os.O_RDONLY)  # the directory itself: no lock file to leave behind
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchLockedError(f"{self.dir}: another nightingale batch is writing this directory; "
                                   "wait for it or use another --out") from None

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def entries(self) -> Dict[str, dict]:
        """The last readable line of each id (a torn last line from a kill is ignored)."""
        out = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    out[entry["id"]] = entry
        return out

    def is_done(self, entry: Optional[dict], request: dict) -> bool:
        if not entry or entry.get("status") != "ok" or entry.get("settings", {}).get("request") != request:
            return False
        path = self.dir / str(entry.get("file", ""))
        return path.is_file() and path.stat().st_size == entry.get("bytes") and file_sha256(path) == entry.get("sha256")

    def start(self, requests: Dict[str, dict]) -> Dict[str, dict]:
        """Cleans up after a killed run; returns the entries of the items in REQUESTS already done."""
        for tmp in self.dir.glob(TEMP_PREFIX + "*"):
            tmp.unlink()
        entries = self.entries()
        done = {i: e for i, e in entries.items() if i in requests and self.is_done(e, requests[i])}
        # Lines of other jobs' items stay; lines of this job's items to redo go.
        keep = [e for i, e in entries.items() if i not in requests or i in done]
        self._rewrite(keep)
        return done

    def _rewrite(self, entries: Iterable[dict]) -> None:
        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
        if self.path.exists() and self.path.read_bytes() == data:
            return
        write_atomic(self.path, data)

    def append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
