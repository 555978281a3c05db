"""Batch inputs: JSONL items, or a text/Markdown file cut into chapters at its headings.

Problems with the file as a whole (unreadable, duplicate ids) stop the job before any work; a bad
line or a bad field becomes that item's error, recorded in the manifest like any other failure.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..outputs import read_utf8

SAMPLING_FIELDS = ("exaggeration", "temperature", "cfg_weight", "repetition_penalty", "min_p", "top_p", "top_k",
                   "max_new_tokens")
ITEM_FIELDS = ("id", "text", "voice", "language", "seed", *SAMPLING_FIELDS)
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
# Plain-text chapter headings: a short line that names a chapter, part or the like.
TEXT_HEADING = re.compile(r"^(chapter|part|book|prologue|epilogue|introduction|preface|afterword)\b.{0,70}$",
                          re.IGNORECASE)
MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


class InputError(ValueError):
    """A batch input that cannot be used as a whole; raised before any work starts."""


@dataclass
class Item:
    """One output to make. `error` set: the item is recorded as failed without being spoken."""

    id: str
    text: str = ""
    options: dict = field(default_factory=dict)  # voice, language, seed and sampling fields as given
    error: Optional[str] = None

    @property
    def stem(self) -> str:
        return safe_stem(self.id)


def safe_stem(item_id: str) -> str:
    """A file name from an id: letters, digits, '-', '_' and '.' kept, the rest '_' (never hidden)."""
    stem = re.sub(r"[^\w.-]", "_", item_id).lstrip(".") or "_"
    return stem[:120]


def default_seed(item_id: str) -> int:
    """The seed of an item that names none: from its id, so every rerun speaks it the same way."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") % 2**63


def _check_fields(obj: dict) -> Optional[str]:
    unknown = sorted(set(obj) - set(ITEM_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; expected {', '.join(ITEM_FIELDS)}"
    if not isinstance(obj.get("text"), str):
        return "'text' must be a string"
    for name in ("voice", "language"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"'{name}' must be a string"
    for name in ("seed", "top_k", "max_new_tokens"):
        if obj.get(name) is not None and (not isinstance(obj[name], int) or isinstance(obj[name], bool)):
            return f"'{name}' must be an integer"
    for name in SAMPLING_FIELDS:
        if obj.get(name) is not None and (not isinstance(obj[name], (int, float)) or isinstance(obj[name], bool)):
            return f"'{name}' must be a number"
    return None


def read_jsonl(path: Path) -> List[Item]:
    items = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            items.append(Item(f"line-{n}", error=f"{path.name} line {n}: not JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), (str, int)) or isinstance(obj.get("id"), bool):
            items.append(Item(f"line-{n}", error=f"{path.name} line {n}: expected an object with an 'id' "
                                                 "(string or integer) and a 'text'"))
            continue
        item_id = str(obj["id"])
        problem = _check_fields(obj)
        options = {k: obj[k] for k in ITEM_FIELDS[2:] if obj.get(k) is not None}
        items.append(Item(item_id, obj.get("text") if isinstance(obj.get("text"), str) else "", options,
                          f"{path.name} line {n}: {problem}" if problem else None))
    return items


def _plain(line: str) -> str:
    """Markdown inline markup -> the words it shows (links keep their text, images go)."""
    line = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", line)
    line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)
    line = re.sub(r"<[^>]+>", "", line)
    line = re.sub(r"^\s{0,3}(>\s?)+", "", line)  # block quotes
    line = re.sub(r"^\s*([-*+]|\d+[.)])\s+", "", line)  # list markers
    line = re.sub(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1", r"\2", line)
    return line


def read_chapters(path: Path) -> List[Item]:
    """One item per chapter: a new chapter at every Markdown heading (# ...), and in .txt files also
    at lines like "Chapter 3" or "Part Two". The heading is spoken, then a paragraph pause."""
    markdown = path.suffix.lower() != ".txt"
    chapters, title, body, fenced = [], None, [], False

    def close():
        text = "\n".join(body).strip()
        if title is not None or text:
            chapters.append((title, text))

    for raw in _read(path).splitlines():
        if raw.lstrip().startswith(("```", "~~~")):
            fenced = not fenced  # code blocks are not read aloud
            continue
        if fenced:
            continue
        md = MD_HEADING.match(raw)
        if md or (not markdown and TEXT_HEADING.match(raw.strip())):
            close()
            title, body = _plain(md.group(2) if md else raw.strip()), []
        elif re.fullmatch(r"\s*([-*_]\s*){3,}", raw):  # a horizontal rule: a paragraph break
            body.append("")
        else:
            body.append(_plain(raw) if markdown else raw)
    close()
    items = []
    for n, (title, text) in enumerate(chapters, 1 if chapters and chapters[0][0] is not None else 0):
        slug = re.sub(r"[^\w]+", "-", (title or "front").lower()).strip("-")[:40] or "chapter"
        heading = title if title and title[-1] in ".!?:;" else f"{title}."
        spoken = f"{heading}\n\n{text}" if title and text else (title or text)
        items.append(Item(f"{n:03d}-{slug}", spoken))
    return items


def _read(path: Path) -> str:
    return read_utf8(path, str(path), "; give a .jsonl, .txt or .md file", InputError)


def read_items(path) -> List[Item]:
    """The items of a .jsonl / .txt / .md file; ids must be unique, also as file names."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items = read_jsonl(path)
    elif suffix in TEXT_SUFFIXES:
        items = read_chapters(path)
    else:
        raise InputError(f"{path}: unsupported input {suffix or '(no extension)'!r}; use .jsonl (one item per line) "
                         "or .txt/.md (chapters at headings)")
    if not items:
        raise InputError(f"{path}: no items (the file is empty)")
    seen = {}
    for item in items:
        key = item.stem.lower()  # case-insensitive file systems (macOS) fold case
        if key in seen:
            raise InputError(f"{path}: items {seen[key]!r} and {item.id!r} would write the same file; ids must be "
                             "unique")
        seen[key] = item.id
    return items
