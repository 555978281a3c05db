"""Long text -> chunks that T3 speaks well: whole sentences, neither tiny nor over ~30 s.

T3 stops at 1000 speech tokens (40 s), so a chunk whose speech would run longer gets cut off; and
chunks of 2-4 words hallucinate far more often than merged ones (PEERS.md: 10-34 % vs 1.2 % for
9 words). So: split at sentence ends, split sentences still over `max_seconds` at clause
punctuation, then spaces, then character boundaries (zh/ja have no spaces), and merge pieces
under `min_words` into a neighbour. Chunks are stripped slices of the input: joining them gives
the text back up to whitespace.
"""

import re
import unicodedata
from typing import List, Tuple

MAX_CHUNK_SECONDS = 30.0  # margin under T3's 40 s budget (speech rates vary per voice)
MIN_CHUNK_WORDS = 5

# Sentence-final marks: Latin/Greek/Cyrillic . ! ?, Arabic ؟ and ۔, Devanagari danda । ॥, Hebrew
# sof pasuq ׃, Armenian ։ ՞ ՜, Ethiopic ።, double marks, and the CJK full/half-width ones.
ENDERS = ".!?؟۔।॥׃։՞՜።‼⁇⁈⁉"
CJK_ENDERS = "。！？｡︒"  # end a sentence with no space after them
# Greek writes its question mark as ";" (U+037E, which NFC/NFKD turn into ";").
LANGUAGE_ENDERS = {"el": ";;"}
CLOSERS = "\"'”’»›)]}」』）】〕〉》"
# Clause marks: Latin , ; : and dashes; Arabic comma/semicolon; CJK comma/enumeration/colon.
CLAUSE = ",;:—–…،؛"
CJK_CLAUSE = "，、；：・"

# Speaking rate in weighted characters per second (letters 1, digits 3, kanji 2), conservative
# (slow) so the estimate errs towards shorter chunks.
CHARS_PER_SECOND = {"zh": 4.5, "ja": 7.0, "ko": 6.0, "ar": 11.0, "he": 11.0, "hi": 12.0}
DEFAULT_CHARS_PER_SECOND = 13.0
DIGIT_WEIGHT = 3  # "2024" reads as ~4 words
KANJI_WEIGHT = 2  # a kanji averages ~2 morae in Japanese
CJK_CHARS_PER_WORD = 2  # for the short-chunk rule in languages written without spaces

Span = Tuple[int, int]


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x3040 <= o <= 0x30FF


def _weight(c: str, language: str) -> int:
    cat = unicodedata.category(c)
    if cat[0] == "N":
        return DIGIT_WEIGHT
    if cat[0] != "L":
        return 0
    if language == "ja" and 0x4E00 <= ord(c) <= 0x9FFF:
        return KANJI_WEIGHT
    return 1


def estimate_seconds(text: str, language: str = "en") -> float:
    """Rough speech duration of `text`, from its letters and the language's speaking rate."""
    rate = CHARS_PER_SECOND.get(language, DEFAULT_CHARS_PER_SECOND)
    return sum(_weight(c, language) for c in text) / rate


def count_words(text: str) -> float:
    """Words, counting CJK characters as 1/CJK_CHARS_PER_WORD word each."""
    cjk = sum(1 for c in text if _is_cjk(c))
    spaced = sum(1 for w in text.split() if any(c.isalnum() and not _is_cjk(c) for c in w))
    return spaced + cjk / CJK_CHARS_PER_WORD


def _cuts(pattern: re.Pattern, text: str, a: int, b: int) -> List[int]:
    """Indices inside (a, b) right after each match: where a piece may end."""
    return [m.end() for m in pattern.finditer(text, a, b) if a < m.end() < b]


def _class(chars: str) -> str:
    return "[" + re.escape(chars) + "]"


def _sentence_pattern(language: str) -> re.Pattern:
    enders = ENDERS + LANGUAGE_ENDERS.get(language, "")
    # A run of enders (plus closing quotes) before whitespace, or CJK enders anywhere, or a blank
    # line. A run of only dots (an ellipsis) is a pause, not an end: punc_norm makes it ", ".
    return re.compile(
        rf"(?<!\.)(?!\.\.)(?:{_class(enders)}+{_class(CLOSERS)}*(?=\s|$))"
        rf"|{_class(CJK_ENDERS)}+{_class(CLOSERS)}*|\n[^\S\n]*\n"
    )


_CLAUSE = re.compile(rf"{_class(CLAUSE)}+{_class(CLOSERS)}*(?=\s)|{_class(CJK_CLAUSE)}+|(?<=\s)-(?=\s)")
_SPACE = re.compile(r"\s+")


def _char_cuts(text: str, a: int, b: int) -> List[int]:
    # Never before a combining mark, so accents and Indic vowel signs stay on their letter.
    return [i for i in range(a + 1, b) if unicodedata.category(text[i])[0] != "M"]


def _pieces(cuts: List[int], a: int, b: int) -> List[Span]:
    edges = [a, *cuts, b]
    return [(s, e) for s, e in zip(edges, edges[1:]) if e > s]


class _Splitter:
    def __init__(self, text: str, language: str, max_seconds: float, min_words: float):
        self.text, self.language = text, language
        self.max_seconds, self.min_words = max_seconds, min_words
        rate = CHARS_PER_SECOND.get(language, DEFAULT_CHARS_PER_SECOND)
        # Prefix sums of character weights make a span's estimate O(1).
        self._cum = [0]
        for c in text:
            self._cum.append(self._cum[-1] + _weight(c, language))
        self._rate = rate

    def seconds(self, span: Span) -> float:
        return (self._cum[span[1]] - self._cum[span[0]]) / self._rate

    def fits(self, span: Span) -> bool:
        return self.seconds(span) <= self.max_seconds

    def words(self, span: Span) -> float:
        return count_words(self.text[span[0]:span[1]])

    def split_long(self, span: Span, level: int = 0) -> List[Span]:
        """Cuts a span over the limit at clause marks, then spaces, then characters."""
        if self.fits(span):
            return [span]
        finders = (
            lambda a, b: _cuts(_CLAUSE, self.text, a, b),
            lambda a, b: [m.start() for m in _SPACE.finditer(self.text, a, b) if a < m.start()],
            lambda a, b: _char_cuts(self.text, a, b),
        )
        for lvl in range(level, len(finders)):
            cuts = finders[lvl](*span)
            if cuts:
                pieces = [p for piece in _pieces(cuts, *span) for p in self.split_long(piece, lvl + 1)]
                return self.pack(pieces)
        return [span]  # a single character: nothing left to cut

    def pack(self, pieces: List[Span]) -> List[Span]:
        """Greedily joins adjacent pieces while the result fits."""
        out: List[Span] = []
        for s in pieces:
            if out and self.fits((out[-1][0], s[1])):
                out[-1] = (out[-1][0], s[1])
            else:
                out.append(s)
        return out

    def merge_short(self, spans: List[Span]) -> List[Span]:
        """Grows a chunk under `min_words` with the next one; a short last chunk joins the one
        before. Only while the result fits."""
        out: List[Span] = []
        for s in spans:
            if out and self.words(out[-1]) < self.min_words and self.fits((out[-1][0], s[1])):
                out[-1] = (out[-1][0], s[1])
            else:
                out.append(s)
        if len(out) > 1 and self.words(out[-1]) < self.min_words and self.fits((out[-2][0], out[-1][1])):
            out[-2:] = [(out[-2][0], out[-1][1])]
        return out


def split_text(text: str, language: str = "en", max_seconds: float = MAX_CHUNK_SECONDS,
               min_words: float = MIN_CHUNK_WORDS) -> List[str]:
    """Splits text into chunks to synthesize one at a time (see the module docstring).

    Returns [] for blank text. A chunk exceeds `max_seconds` only if it is one character.
    """
    language = (language or "en").lower()
    sp = _Splitter(text, language, max_seconds, min_words)
    sentences = _pieces(_cuts(_sentence_pattern(language), text, 0, len(text)), 0, len(text))
    spans = [p for s in sentences if text[s[0]:s[1]].strip() for p in sp.split_long(s)]
    spans = sp.merge_short(spans)
    chunks = [text[a:b].strip() for a, b in spans]
    return [c for c in chunks if c]
