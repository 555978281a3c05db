"""The 23 languages of the multilingual model and their text preprocessors (spec §2.2).

Each preprocessor reproduces the reference's step (chatterbox/models/tokenizers/tokenizer.py)
character for character; only what happens when an optional package is missing differs where the
issue asks for a clear error instead of a silent skip (ja, and zh without its Cangjie table).
"""

import json
import logging
import unicodedata
from pathlib import Path
from typing import Callable, Dict, List, Optional

logger = logging.getLogger(__name__)

SUPPORTED_LANGUAGES = {
    "ar": "Arabic",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "ms": "Malay",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "sv": "Swedish",
    "sw": "Swahili",
    "tr": "Turkish",
    "zh": "Chinese",
}

# Code points the reference tests with (tokenizer.py: is_kanji, decompose_hangul). Its
# is_katakana branch keeps the text as written, like its fallback, so it needs no range here.
KANJI = (0x4E00, 0x9FFF)
HANGUL_SYLLABLES = (0xAC00, 0xD7AF)


class TextError(ValueError):
    """Text the front end cannot handle; the message says what to do."""


class UnsupportedLanguageError(TextError):
    pass


class MissingDependencyError(TextError):
    """An optional package a language needs is not installed (names the extra to install)."""


def validate_language(language: Optional[str]) -> str:
    """Returns the lowercase code of a supported language, or raises UnsupportedLanguageError."""
    code = language.strip().lower() if isinstance(language, str) else ""
    if code not in SUPPORTED_LANGUAGES:
        listed = ", ".join(f"{c} ({n})" for c, n in SUPPORTED_LANGUAGES.items())
        shown = "no language" if not code else f"language {language!r}"
        raise UnsupportedLanguageError(f"{shown} is not supported; pass one of: {listed}")
    return code


_warned = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


# ---------------------------------------------------------------------------------------- zh


class CangjieTable:
    """`Cangjie5_TC.json` (a list of "char\\tcode" strings) as the reference reads it.

    The reference keeps the last code listed for a char, and appends the char's index among the
    chars sharing that code (when not 0), so each char maps to one fixed token string.
    """

    FILE = "Cangjie5_TC.json"

    def __init__(self, entries: List[str]):
        word2cj: Dict[str, str] = {}
        cj2word: Dict[str, List[str]] = {}
        for entry in entries:
            word, code = entry.split("\t")[:2]
            word2cj[word] = code
            cj2word.setdefault(code, []).append(word)
        self.tokens = {}
        for word, code in word2cj.items():
            index = cj2word[code].index(word)
            spelled = code + (str(index) if index > 0 else "")
            self.tokens[word] = "".join(f"[cj_{c}]" for c in spelled) + "[cj_.]"

    @classmethod
    def load(cls, path) -> "CangjieTable":
        path = Path(path)
        if not path.is_file():
            raise MissingDependencyError(
                f"Chinese needs the Cangjie table {cls.FILE}, which is missing from {path.parent}; "
                "convert the model again from a checkpoint that includes it"
            )
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            return cls(entries)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
            raise TextError(f"{path}: not a Cangjie table ({e}); convert the model again") from e


def load_pkuseg() -> Optional[Callable[[str], List[str]]]:
    """pkuseg's `cut`, or None (with a warning) when the package or its downloaded model is absent.

    The reference catches only ImportError, so offline it crashes on the model download; the
    issue asks for the same fallback as a missing package: unsegmented text.
    """
    try:
        from spacy_pkuseg import pkuseg

        return pkuseg().cut
    except ImportError:
        _warn_once("pkuseg", "spacy_pkuseg is not installed: Chinese text goes unsegmented "
                   "(pip install 'nightingale-mlx[zh]')")
    except Exception as e:  # its model download failed (offline): same fallback
        _warn_once("pkuseg", f"pkuseg could not load its model ({type(e).__name__}: {e}): "
                   "Chinese text goes unsegmented")
    return None


def chinese_cangjie(text: str, table: CangjieTable, segment: Optional[Callable] = None) -> str:
    """Segments (when a segmenter is given) then spells each table `Lo` char as Cangjie tokens."""
    if segment is not None:
        text = " ".join(segment(text))
    return "".join(
        table.tokens.get(c, c) if unicodedata.category(c) == "Lo" else c for c in text
    )


# ---------------------------------------------------------------------------------------- ja

_kakasi = None


def _kakasi_converter():
    global _kakasi
    if _kakasi is None:
        try:
            import pykakasi
        except ImportError as e:
            raise MissingDependencyError(
                "Japanese needs pykakasi: pip install 'nightingale-mlx[ja]'"
            ) from e
        _kakasi = pykakasi.kakasi()
    return _kakasi


def _in(c: str, bounds) -> bool:
    return bounds[0] <= ord(c) <= bounds[1]


def japanese_hiragana(text: str) -> str:
    """Kanji segments -> their hiragana reading (a space before は/へ), then NFKD (splits dakuten)."""
    out = []
    for seg in _kakasi_converter().convert(text):
        orig, hira = seg["orig"], seg["hira"]
        if any(_in(c, KANJI) for c in orig):
            # The reference's heuristic for the particles は/へ read as wa/e after a kanji word.
            out.append(" " + hira if hira and hira[0] in ("は", "へ") else hira)
        else:
            out.append(orig)  # katakana and everything else are kept as written
    return unicodedata.normalize("NFKD", "".join(out))


# ---------------------------------------------------------------------------------------- ko


def korean_jamo(text: str) -> str:
    """Hangul syllables -> conjoining jamo, then strip. After NFKD this is only the strip."""

    def decompose(c: str) -> str:
        if not _in(c, HANGUL_SYLLABLES):
            return c
        base = ord(c) - 0xAC00
        initial = chr(0x1100 + base // (21 * 28))
        medial = chr(0x1161 + (base % (21 * 28)) // 28)
        final = chr(0x11A7 + base % 28) if base % 28 > 0 else ""
        return initial + medial + final

    return "".join(decompose(c) for c in text).strip()


# ---------------------------------------------------------------------------------- he / ru

_optional = {}


def _optional_model(key: str, build: Callable, package: str):
    """A lazily built optional model, or None (warned once) when its package is missing."""
    if key not in _optional:
        try:
            _optional[key] = build()
        except ImportError:
            _warn_once(key, f"{package} is not installed: {key} preprocessing is skipped, "
                       "as the reference does")
            _optional[key] = None
    return _optional[key]


def _optional_step(text: str, key: str, package: str, build, apply) -> str:
    """Runs an optional package's text step; without the package (or on its failure) text is unchanged,
    as in the reference, which logs and falls back to the plain text."""
    model = _optional_model(key, build, package)
    if model is None:
        return text
    try:
        return apply(model, text)
    except Exception as e:
        logger.warning(f"{key} failed: {e}")
        return text


def hebrew_diacritics(text: str) -> str:
    """Adds niqqud with dicta_onnx when installed."""

    def build():
        from dicta_onnx import Dicta

        return Dicta()

    return _optional_step(text, "hebrew diacritics", "dicta_onnx", build, lambda m, t: m.add_diacritics(t))


def russian_stress(text: str) -> str:
    """Adds stress marks with russian_text_stresser when installed."""

    def build():
        from russian_text_stresser.text_stresser import RussianTextStresser

        return RussianTextStresser()

    return _optional_step(text, "russian stress", "russian_text_stresser", build, lambda m, t: m.stress_text(t))
