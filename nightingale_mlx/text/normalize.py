"""`punc_norm`: the reference's punctuation cleanup before tokenization (spec §2.1).

The multilingual (mtl_tts.py) and English (tts.py) versions differ only in which endings count as
already punctuated; the multilingual one also accepts the CJK ones.
"""

EMPTY_TEXT = "You need to add some text for me to talk."

# Applied in this order (order matters: "..." must go before ":" and " ," runs last but two).
PUNCTUATION_REPLACEMENTS = (
    ("...", ", "),
    ("…", ", "),
    (":", ","),
    (" - ", ", "),
    (";", ", "),
    ("—", "-"),
    ("–", "-"),
    (" ,", ","),
    ("“", '"'),
    ("”", '"'),
    ("‘", "'"),
    ("’", "'"),
)
# Turbo's punc_norm (tts_turbo.py) keeps "...", " - " and ";" as they are.
TURBO_REPLACEMENTS = tuple(r for r in PUNCTUATION_REPLACEMENTS if r[0] not in ("...", " - ", ";"))
ENGLISH_ENDERS = (".", "!", "?", "-", ",")
MULTILINGUAL_ENDERS = ENGLISH_ENDERS + ("、", "，", "。", "？", "！")


def punc_norm(text: str, multilingual: bool = True, capitalize: bool = True, turbo: bool = False) -> str:
    """The reference's `punc_norm`: capitalise, collapse whitespace, replace rare punctuation,
    end with a full stop when no ending punctuation is there.

    `multilingual=False` is the English model's version. `capitalize=False` is the full-case v3
    variant (spec §2 caveat), which skips the capitalisation. `turbo=True` is Turbo's version
    (English endings, fewer replacements).
    """
    if len(text) == 0:
        return EMPTY_TEXT
    if capitalize and text[0].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in TURBO_REPLACEMENTS if turbo else PUNCTUATION_REPLACEMENTS:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(MULTILINGUAL_ENDERS if multilingual and not turbo else ENGLISH_ENDERS):
        text += "."
    return text
