"""Text tokenizers: the multilingual grapheme tokenizer and the English one (spec §2.2).

Both wrap the checkpoint's HF `tokenizers` JSON and reproduce the reference's `encode` exactly:

- multilingual (`MTLTokenizer`, 2454 ids), `text_preproc="v2"`: lowercase, NFKD, the language's
  step (zh Cangjie, ja kana, he diacritics, ko jamo, ru stress), the `[lang]` tag, spaces ->
  `[SPACE]`. This is the reference HEAD's path for v2 *and* v3 checkpoints, hence the default.
- multilingual, `text_preproc="nfkd_fullcase"`: what mlx-audio and a V3 model card say v3 was
  trained on (unverified, spec §2 caveat): no capitalisation in punc_norm, no lowercasing, the
  zh Cangjie / ru stress steps before NFKD, no ja/he/ko steps. Opt in per checkpoint in config.json.
- English (`EnTokenizer`, 704 ids): spaces -> `[SPACE]` only; no language tag, no lowercasing.
- GPT-2 (Turbo/Nano, 50276 ids): byte-level BPE with Chatterbox's added tokens (`[laugh]`,
  `[sigh]`, ...), which pass through as single ids; Turbo's punc_norm; no [START]/[STOP].

`encode` is the reference's `encode` (no punc_norm, no SOT/EOT). `text_tokens` is what T3 takes:
punc_norm, encode, then `[START] ... [STOP]` around it.
"""

import logging
import unicodedata
from pathlib import Path
from typing import Callable, List, Optional, Union

from ..config import TEXT_KINDS, TEXT_PREPROC, T3Config, TextConfig
from .languages import (
    CangjieTable,
    TextError,
    UnsupportedLanguageError,
    chinese_cangjie,
    hebrew_diacritics,
    japanese_hiragana,
    korean_jamo,
    load_pkuseg,
    russian_stress,
    validate_language,
)
from .normalize import punc_norm

logger = logging.getLogger(__name__)

SOT, EOT, UNK, SPACE = "[START]", "[STOP]", "[UNK]", "[SPACE]"


class TextTooLongError(TextError):
    pass


class EmptyTextError(TextError):
    pass


def _checked(text) -> str:
    if not isinstance(text, str):
        raise TextError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: the Rust tokenizer cannot take them
        raise TextError(f"text is not valid Unicode ({e.reason} at {e.start}); "
                        "decode the input as UTF-8 first") from e
    return text


class Tokenizer:
    """Base: an HF `tokenizers` file plus the reference's text steps. Use `from_model_dir`."""

    kind: str = ""
    required_tokens = (SOT, EOT)

    def __init__(self, path, config: TextConfig):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise TextError(f"{path}: tokenizer file missing; convert the model again")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises bare Exceptions on bad JSON
            raise TextError(f"{path}: unreadable tokenizer ({e}); convert the model again") from e
        vocab = self._tok.get_vocab()
        missing = [t for t in self.required_tokens if t not in vocab]
        if missing:
            raise TextError(f"{path}: tokenizer lacks {missing}; not a Chatterbox tokenizer")
        self.config = config
        self.path = path
        self.start_id, self.stop_id, self.unk_id = vocab.get(SOT), vocab.get(EOT), vocab.get(UNK)

    @staticmethod
    def from_model_dir(model_dir, text_config: Union[TextConfig, dict, None] = None, **kwargs) -> "Tokenizer":
        """The tokenizer of a converted model dir (`text` section of config.json unless given)."""
        model_dir = Path(model_dir)
        if text_config is None:
            from ..model_io import load_config

            text_config = load_config(model_dir).text
            if text_config is None:
                raise TextError(f"{model_dir}: config.json has no text section; convert the model again")
        if isinstance(text_config, dict):
            text_config = TextConfig.from_dict(text_config)
        if text_config.kind not in TEXT_KINDS:
            raise TextError(f"unknown tokenizer kind {text_config.kind!r}; expected one of {TEXT_KINDS}")
        cls = {"mtl": MultilingualTokenizer, "en": EnglishTokenizer, "gpt2": GPT2Tokenizer}[text_config.kind]
        return cls(model_dir / text_config.tokenizer, text_config, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def normalize(self, text: str) -> str:
        """The reference's punc_norm for this tokenizer's model."""
        raise NotImplementedError

    def encode(self, text: str, language: Optional[str] = None) -> List[int]:
        """Token ids exactly as the reference's `encode` gives them (no punc_norm, no SOT/EOT)."""
        raise NotImplementedError

    def text_tokens(self, text: str, language: Optional[str] = None,
                    max_tokens: int = T3Config.max_text_tokens) -> List[int]:
        """T3's text input: punc_norm, encode, wrapped in [START] ... [STOP].

        Raises EmptyTextError for blank text (the reference would speak a stock sentence instead)
        and TextTooLongError beyond T3's position table; split long text with `split_text`.
        """
        if not _checked(text).strip():
            raise EmptyTextError("text is empty; pass something to say")
        ids = self.encode(self.normalize(text), language)
        if len(ids) > max_tokens:
            raise TextTooLongError(
                f"text is {len(ids)} tokens, over the model's {max_tokens}; "
                "split it into sentences first (nightingale_mlx.text.split_text)"
            )
        if self.unk_id is not None and self.unk_id in ids:
            # A constant template: the CLI shows each warning once per run, not once per sentence.
            logger.warning("some of the text is not in the model's vocabulary and is read as %s", UNK)
        return [self.start_id, *ids, self.stop_id]

    def decode(self, ids) -> str:
        """Text of token ids, as the reference decodes it (specials dropped, [SPACE] -> ' ')."""
        txt = self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
        return txt.replace(" ", "").replace(SPACE, " ").replace(EOT, "").replace(UNK, "")

    def _ids(self, txt: str) -> List[int]:
        return self._tok.encode(txt.replace(" ", SPACE)).ids


class MultilingualTokenizer(Tokenizer):
    """`grapheme_mtl_merged_expanded_v1.json` with the reference's per-language steps.

    `segmenter`: "auto" loads pkuseg on first Chinese use (unsegmented, with a warning, when it
    or its model is missing), None never segments, or any callable str -> list of words.
    """

    kind = "mtl"

    def __init__(self, path, config: TextConfig, segmenter: Union[str, Callable, None] = "auto"):
        super().__init__(path, config)
        if config.text_preproc not in TEXT_PREPROC:
            raise TextError(f"unknown text_preproc {config.text_preproc!r}; expected one of {TEXT_PREPROC}")
        self._segmenter = segmenter
        self._cangjie: Optional[CangjieTable] = None

    def normalize(self, text: str) -> str:
        return punc_norm(text, multilingual=True, capitalize=self.config.text_preproc == "v2")

    def encode(self, text: str, language: Optional[str] = None) -> List[int]:
        lang = validate_language(language)
        text = _checked(text)
        if self.config.text_preproc == "v2":
            txt = unicodedata.normalize("NFKD", text.lower())
            txt = self._language_step(txt, lang)
        else:
            txt = text
            if lang == "zh":
                txt = self._chinese(txt)
            elif lang == "ru":
                txt = russian_stress(txt)
            txt = unicodedata.normalize("NFKD", txt)
        return self._ids(f"[{lang}]{txt}")

    def _language_step(self, txt: str, lang: str) -> str:
        if lang == "zh":
            return self._chinese(txt)
        if lang == "ja":
            return japanese_hiragana(txt)
        if lang == "he":
            return hebrew_diacritics(txt)
        if lang == "ko":
            return korean_jamo(txt)
        if lang == "ru":
            return russian_stress(txt)
        return txt

    def _chinese(self, txt: str) -> str:
        if self._cangjie is None:
            name = self.config.cangjie or CangjieTable.FILE
            self._cangjie = CangjieTable.load(self.path.parent / name)
        if self._segmenter == "auto":
            self._segmenter = load_pkuseg()
        return chinese_cangjie(txt, self._cangjie, self._segmenter)


class EnglishTokenizer(Tokenizer):
    """The English model's `tokenizer.json`: only spaces become [SPACE]."""

    kind = "en"

    def normalize(self, text: str) -> str:
        return punc_norm(text, multilingual=False)

    def encode(self, text: str, language: Optional[str] = None) -> List[int]:
        if language is not None and validate_language(language) != "en":
            raise UnsupportedLanguageError(
                f"the English model speaks only en, not {language!r}; use a multilingual model "
                "(nightingale convert --variant mtl-v3)"
            )
        return self._ids(_checked(text))


class GPT2Tokenizer(Tokenizer):
    """Turbo/Nano: the GPT-2 byte-level BPE (with Chatterbox's added tags) as one `tokenizers` file,
    built by the converter from the checkpoint's vocab/merges/added tokens. English only."""

    kind = "gpt2"
    required_tokens = ()
    model_max_length = 1024  # GPT-2's; the reference truncates there, we refuse (split_text first)

    def normalize(self, text: str) -> str:
        return punc_norm(text, multilingual=False, turbo=True)

    def encode(self, text: str, language: Optional[str] = None) -> List[int]:
        if language is not None and validate_language(language) != "en":
            raise UnsupportedLanguageError(
                f"Turbo and Nano speak only en, not {language!r}; use a multilingual model "
                "(nightingale convert --variant mtl-v3)"
            )
        return self._tok.encode(_checked(text), add_special_tokens=False).ids

    def text_tokens(self, text: str, language: Optional[str] = None,
                    max_tokens: int = model_max_length) -> List[int]:
        """T3's text input: Turbo's punc_norm and the BPE ids, nothing around them (inference_turbo)."""
        if not _checked(text).strip():
            raise EmptyTextError("text is empty; pass something to say")
        ids = self.encode(self.normalize(text), language)
        if len(ids) > max_tokens:
            raise TextTooLongError(f"text is {len(ids)} tokens, over the tokenizer's {max_tokens}; "
                                   "split it into sentences first (nightingale_mlx.text.split_text)")
        return ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
