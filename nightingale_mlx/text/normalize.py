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
ENGLISH_ENDERS = (".", "!", "?", "-", ",")
MULTILINGUAL_ENDERS = ENGLISH_ENDERS + ("、", "，", "。", "？", "！")


def punc_norm(text: str, multilingual: bool = True, capitalize: bool = True) -> str:
    """The reference's `punc_norm`: capitalise, collapse whitespace, replace rare punctuation,
    end with a full stop when no ending punctuation is there.

    `multilingual=False` is the English model's version. `capitalize=False` is the full-case v3
    variant (spec §2 caveat), which skips the capitalisation.
    """
    if len(text) == 0:
        return EMPTY_TEXT
    if capitalize and text[0].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in PUNCTUATION_REPLACEMENTS:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(MULTILINGUAL_ENDERS if multilingual else ENGLISH_ENDERS):
        text += "."
    return text
