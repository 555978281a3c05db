"""Voices by name: the model's built-in ones and the baked voices in the `--voices` dir.

A name is never a path: it must match NAME_RE, and only `<dir>/<name>.safetensors` in the two
known dirs is ever opened, so `../x` or `/etc/passwd` cannot reach the file system.
"""

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

from .errors import APIError, one_line

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEFAULT = "default"
# OpenAI's voice names: clients send them; those we have no voice for speak with the built-in one.
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
SUFFIX = ".safetensors"


def check_name(name: str, param: str = "voice") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise APIError(400, f"{param} {name!r} is not a valid voice name: use 1-64 letters, digits, '-' or '_', "
                            "starting with a letter or digit", param=param, code="invalid_voice_name")
    return name


class VoiceStore:
    """Looks voices up by name, loads them through `load_file` (TTS.voice_file: kept while the file
    is unchanged, with T3's stored prefix for each), stores uploads."""

    def __init__(self, builtin_dir: Path, user_dir: Path, load_file: Callable[[Path], object]):
        self.builtin_dir, self.user_dir = Path(builtin_dir), Path(user_dir)
        self._load_file = load_file

    def names(self) -> List[str]:
        found = set()
        for d in (self.user_dir, self.builtin_dir):
            if d.is_dir():
                found |= {p.stem for p in d.glob("*" + SUFFIX) if NAME_RE.match(p.stem)}
        return sorted(found, key=lambda n: (n != DEFAULT, n))

    def path(self, name: Optional[str]) -> Path:
        """The file of voice NAME (None: the built-in voice); 404 when there is none."""
        name = DEFAULT if name in (None, "") else check_name(name)
        for d in (self.user_dir, self.builtin_dir):
            candidate = d / (name + SUFFIX)
            if candidate.is_file():
                return candidate
        if name in OPENAI_VOICES or name == DEFAULT:
            return self.builtin_dir / (DEFAULT + SUFFIX)
        raise APIError(404, f"voice {name!r} not found; available: {', '.join(self.names())} (or upload one with "
                            "POST /v1/audio/voices)", param="voice", code="voice_not_found")

    def load(self, path: Path):
        """The Voice in PATH (call on the model's worker: MLX evaluates it there)."""
        try:
            return self._load_file(path)
        except ValueError as e:  # a broken file in a voices dir: the server's problem, said without its paths
            raise APIError(500, f"voice {path.stem!r} cannot be loaded: {one_line(e).replace(str(path), 'its file')}",
                           param="voice", code="voice_unreadable") from None

    def check_new(self, name: str) -> Path:
        """Where an upload named NAME goes; 409 if that name is taken (uploads never replace)."""
        check_name(name, "name")
        if (self.builtin_dir / (name + SUFFIX)).is_file() or (self.user_dir / (name + SUFFIX)).is_file():
            raise APIError(409, f"a voice named {name!r} already exists; pick another name", param="name",
                           code="voice_exists")
        return self.user_dir / (name + SUFFIX)

    def save(self, name: str, voice) -> Path:
        """Writes VOICE atomically (temp file beside it, then a no-replace link into place)."""
        target = self.check_new(name)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=SUFFIX, dir=self.user_dir, prefix=".upload-")
        os.close(fd)
        try:
            voice.save(tmp)
            try:
                os.link(tmp, target)  # fails if another upload took the name meanwhile
            except FileExistsError:
                raise APIError(409, f"a voice named {name!r} already exists; pick another name", param="name",
                               code="voice_exists") from None
        finally:
            os.unlink(tmp)
        return target
