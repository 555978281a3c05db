"""Text front end: punctuation normalization, language validation and preprocessing, tokenizers,
and the long-text splitter (spec §2)."""

from .languages import (  # noqa: F401
    SUPPORTED_LANGUAGES,
    MissingDependencyError,
    TextError,
    UnsupportedLanguageError,
    validate_language,
)
from .normalize import punc_norm  # noqa: F401
from .split import MAX_CHUNK_SECONDS, estimate_seconds, split_text  # noqa: F401
from .tokenizer import (  # noqa: F401
    EmptyTextError,
    EnglishTokenizer,
    GPT2Tokenizer,
    MultilingualTokenizer,
    TextTooLongError,
    Tokenizer,
)
