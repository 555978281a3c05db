"""Text front end: punc_norm, language validation, preprocessing errors, conversion, long-text
splitting, and random-unicode fuzzing. Token-id parity with the reference is in test_text_parity.py."""

import json
import logging
import random
import sys

import pytest

from convert.sanitize import ConversionError
from convert.text import CANGJIE_FILE, HF_CACHE_FOLDER, convert_text
from nightingale_mlx.text import (
    SUPPORTED_LANGUAGES,
    EmptyTextError,
    MissingDependencyError,
    TextError,
    TextTooLongError,
    Tokenizer,
    UnsupportedLanguageError,
    estimate_seconds,
    punc_norm,
    split_text,
    validate_language,
)
from nightingale_mlx.text import languages
from nightingale_mlx.text.split import count_words
from tests.reference import text_harness


def _model(tmp_path, variant="mtl-v2", text_preproc=None, drop=()):
    ckpt = text_harness.fixture_checkpoint(variant, tmp_path / "ckpt")
    for name in drop:
        (ckpt / name).unlink()
    out = tmp_path / "model"
    out.mkdir()
    return out, convert_text(ckpt, variant, out, text_preproc)


@pytest.fixture(scope="module")
def mtl(tmp_path_factory):
    model_dir, cfg = _model(tmp_path_factory.mktemp("mtl"))
    return Tokenizer.from_model_dir(model_dir, cfg, segmenter=None)


@pytest.fixture(scope="module")
def en(tmp_path_factory):
    model_dir, cfg = _model(tmp_path_factory.mktemp("en"), "en")
    return Tokenizer.from_model_dir(model_dir, cfg)


# ------------------------------------------------------------------------------ punc_norm


@pytest.mark.parametrize("text, expected", [
    ("", "You need to add some text for me to talk."),
    ("hello world", "Hello world."),
    ("  many   spaces\there\n", "many spaces here."),  # capitalises before stripping
    ("wait... what… yes: no; maybe", "Wait,  what,  yes, no,  maybe."),  # collapses before replacing
    ("a - b — c – d", "A, b - c - d."),
    ("“quoted” and ‘single’", "\"quoted\" and 'single'."),
    ("ends with a comma,", "Ends with a comma,"),
    ("Already done!", "Already done!"),
    ("ñandú", "Ñandú."),
])
def test_punc_norm(text, expected):
    assert punc_norm(text) == expected


def test_punc_norm_variants():
    assert punc_norm("你好。") == "你好。"  # a CJK full stop ends the multilingual text
    assert punc_norm("你好。", multilingual=False) == "你好。."  # English enders are ASCII only
    assert punc_norm("hello", capitalize=False) == "hello."


# ------------------------------------------------------------------------------ languages


def test_validate_language():
    assert len(SUPPORTED_LANGUAGES) == 23
    assert validate_language("EN") == "en" and validate_language(" Zh ") == "zh"
    for bad in ("xx", "", None, "english"):
        with pytest.raises(UnsupportedLanguageError, match="ar \\(Arabic\\).*zh \\(Chinese\\)"):
            validate_language(bad)
    assert issubclass(UnsupportedLanguageError, ValueError)


def test_tokenizer_refuses_unknown_language(mtl, en):
    with pytest.raises(UnsupportedLanguageError):
        mtl.text_tokens("Hello.", "xx")
    with pytest.raises(UnsupportedLanguageError, match="speaks only en"):
        en.text_tokens("Hola.", "es")
    assert en.text_tokens("Hello.", "EN") == en.text_tokens("Hello.")


def test_text_tokens_wraps_sot_eot(mtl):
    ids = mtl.text_tokens("hello", "EN")
    assert ids[0] == 255 and ids[-1] == 0 and ids[1] == 708
    assert ids[1:-1] == mtl.encode(punc_norm("hello"), "en")
    assert mtl.decode(ids) == "[START][en]hello."


def test_text_errors(mtl):
    with pytest.raises(TextError, match="valid Unicode"):
        mtl.text_tokens("bad \ud800 surrogate", "en")
    with pytest.raises(TextError, match="must be a str"):
        mtl.text_tokens(b"bytes", "en")
    for blank in ("", " \n\t"):
        with pytest.raises(EmptyTextError, match="empty"):
            mtl.text_tokens(blank, "en")
    with pytest.raises(TextTooLongError, match="split_text"):
        mtl.text_tokens("ab " * 1500, "en")


def test_japanese_without_pykakasi_names_the_extra(mtl, monkeypatch):
    monkeypatch.setattr(languages, "_kakasi", None)
    monkeypatch.setitem(sys.modules, "pykakasi", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'nightingale-mlx\[ja\]'"):
        mtl.text_tokens("東京", "ja")


def test_chinese_without_cangjie_table(tmp_path):
    model_dir, cfg = _model(tmp_path, drop=[CANGJIE_FILE])
    assert cfg["cangjie"] is None
    tok = Tokenizer.from_model_dir(model_dir, cfg, segmenter=None)
    assert tok.text_tokens("hello", "en")  # only Chinese needs the table
    with pytest.raises(MissingDependencyError, match=CANGJIE_FILE):
        tok.text_tokens("你好", "zh")


def test_chinese_segmentation(tmp_path, monkeypatch, caplog):
    model_dir, cfg = _model(tmp_path)
    monkeypatch.setitem(sys.modules, "spacy_pkuseg", None)
    monkeypatch.setattr(languages, "_warned", set())
    auto = Tokenizer.from_model_dir(model_dir, cfg)
    plain = Tokenizer.from_model_dir(model_dir, cfg, segmenter=None)
    with caplog.at_level(logging.WARNING):
        assert auto.text_tokens("你好今天", "zh") == plain.text_tokens("你好今天", "zh")
    assert "unsegmented" in caplog.text
    split = Tokenizer.from_model_dir(model_dir, cfg, segmenter=lambda t: [t[:2], t[2:]])
    ids = split.text_tokens("你好今天", "zh")
    assert ids.count(2) == 1  # the segmenter's space becomes one [SPACE]


def test_nfkd_fullcase(tmp_path):
    model_dir, cfg = _model(tmp_path, text_preproc="nfkd_fullcase")
    assert cfg["text_preproc"] == "nfkd_fullcase"
    full = Tokenizer.from_model_dir(model_dir, cfg, segmenter=None)
    v2 = Tokenizer.from_model_dir(model_dir, {**cfg, "text_preproc": "v2"}, segmenter=None)
    assert full.normalize("hello") == "hello."  # no capitalisation
    assert full.encode("Ab", "en") != v2.encode("Ab", "en")  # no lowercasing
    assert full.encode("ab", "en") == v2.encode("ab", "en")
    assert full.encode("你好", "zh") == v2.encode("你好", "zh")  # Cangjie before NFKD: same here


def test_from_model_dir_reads_config(tmp_path):
    model_dir, cfg = _model(tmp_path, "en")
    (model_dir / "config.json").write_text(json.dumps({"variant": "en", "text": cfg}))
    assert Tokenizer.from_model_dir(model_dir).kind == "en"
    (model_dir / "config.json").write_text(json.dumps({"variant": "en"}))
    with pytest.raises(TextError, match="no text section"):
        Tokenizer.from_model_dir(model_dir)


# ------------------------------------------------------------------------------ conversion


def test_convert_text_errors(tmp_path):
    ckpt = text_harness.fixture_checkpoint("mtl-v2", tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="tokenizer.json"):
        convert_text(ckpt, "en", out)
    with pytest.raises(ConversionError, match="text_preproc"):
        convert_text(ckpt, "mtl-v2", out, "lowercase")
    (ckpt / CANGJIE_FILE).write_text('["no tab here"]')
    with pytest.raises(ConversionError, match="char<TAB>code"):
        convert_text(ckpt, "mtl-v2", out)
    (ckpt / "grapheme_mtl_merged_expanded_v1.json").write_text("{not json")
    with pytest.raises(ConversionError, match="not a tokenizers JSON"):
        convert_text(ckpt, "mtl-v2", out)
    en_ckpt = text_harness.fixture_checkpoint("en", tmp_path / "en")
    with pytest.raises(ConversionError, match="multilingual"):
        convert_text(en_ckpt, "en", out, "v2")


def test_convert_finds_cangjie_in_hf_cache(tmp_path):
    ckpt = text_harness.fixture_checkpoint("mtl-v2", tmp_path / "ckpt")
    snapshot = ckpt / HF_CACHE_FOLDER / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (ckpt / CANGJIE_FILE).rename(snapshot / CANGJIE_FILE)
    out = tmp_path / "out"
    out.mkdir()
    assert convert_text(ckpt, "mtl-v2", out)["cangjie"] == CANGJIE_FILE
    assert (out / CANGJIE_FILE).is_file()


# ------------------------------------------------------------------------------ long text

MAX_S = 30.0
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
         "hex every jolly zebra near 42 old houses in 1999").split()


def _long_text(n_words: int, seed: int = 0) -> str:
    """Prose with sentences of 1-40 words, clause marks, quotes and ellipses, and a few 200-word
    run-ons with no punctuation at all (those must split at spaces)."""
    rng = random.Random(seed)
    parts, n = [], 0
    while n < n_words:
        k = rng.choice([1, 2, 3, 6, 12, 25, 40]) if rng.random() > 0.01 else 200
        words = [rng.choice(WORDS) for _ in range(k)]
        for i in range(3, k - 1 if k < 200 else 0, rng.randint(4, 9)):
            words[i] += rng.choice([",", ";", ":", " —", "..."])
        sentence = " ".join(words) + rng.choice([".", "!", "?", "?!", ".\"", "…"])
        parts.append(sentence[0].upper() + sentence[1:])
        n += k
    return ("  " if seed % 2 else "\n\n").join(parts)


def _skeleton(s: str) -> str:
    """Text without whitespace, case, or the punctuation punc_norm adds or rewrites."""
    return "".join(c for c in s.casefold() if not c.isspace() and c not in ".,-\"'…:;—–“”‘’")


def _check_split(text: str, chunks: list, language: str, max_s=MAX_S, min_words=5):
    assert "".join("".join(chunks).split()) == "".join(text.split()), "characters lost or added"
    assert all(c == c.strip() and c for c in chunks)
    for i, c in enumerate(chunks):
        assert estimate_seconds(c, language) <= max_s or len(c) == 1
        if count_words(c) < min_words and len(chunks) > 1:  # short only when merging would overflow
            j = i + 1 if i + 1 < len(chunks) else i - 1
            assert estimate_seconds(c + chunks[j], language) > max_s


def test_split_5000_words_loses_nothing():
    text = _long_text(5000)
    assert len(text.split()) >= 5000
    chunks = split_text(text, "en")
    _check_split(text, chunks, "en")
    normalized = "".join(punc_norm(c) for c in chunks)
    assert _skeleton(normalized) == _skeleton(punc_norm(text))
    assert max(estimate_seconds(c) for c in chunks) > 0.8 * MAX_S  # run-ons were cut near the limit
    assert 100 < len(chunks) < 1000


@pytest.mark.parametrize("text, language, expected", [
    ("今天天气很好！我们去公园吧。", "zh", 1),  # short CJK sentences merge
    ("Καλημέρα, τι κάνεις σήμερα το πρωί; Ο καιρός είναι πολύ ωραίος σήμερα!", "el", 2),
    ("मेरे पास तीन सेब और सात नाशपाती हैं। आज मौसम बहुत अच्छा है और धूप है!", "hi", 2),
    ("كيف حالك اليوم يا صديقي العزيز؟ الطقس جميل جدا هنا في المدينة.", "ar", 2),
    ("Wait... this ellipsis does not end the sentence at all. Neither, does this comma here.", "en", 2),
])
def test_split_sentence_enders(text, language, expected):
    chunks = split_text(text, language)
    assert len(chunks) == expected, chunks
    _check_split(text, chunks, language)


@pytest.mark.parametrize("language", ["zh", "ja"])
def test_split_unspaced_cjk_at_characters(language):
    text = "东京的天气很好" * 120  # no punctuation, no spaces: ~840 chars
    chunks = split_text(text, language)
    assert len(chunks) > 1
    _check_split(text, chunks, language)


def test_split_keeps_combining_marks():
    text = "e\u0301" * 2000  # é as e + combining acute, too long for one chunk
    chunks = split_text(text, "fr")
    _check_split(text, chunks, "fr")
    assert all(not c.startswith("\u0301") for c in chunks)


def test_split_blank():
    assert split_text("", "en") == [] and split_text(" \n\t ", "en") == []


# ------------------------------------------------------------------------------ fuzzing
# hypothesis is in the [dev] extra; without it only the fuzz tests skip.

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

LANGS = sorted(SUPPORTED_LANGUAGES)

if given is None:
    def test_fuzz():
        pytest.skip("hypothesis is not installed (pip install 'nightingale-mlx[dev]')")
else:
    @settings(max_examples=150, deadline=None)
    @given(text=st.text(max_size=60), lang=st.sampled_from(LANGS))
    def test_fuzz_tokenizer(mtl, en, text, lang):
        """Random unicode either encodes to valid ids or raises the documented TextError."""
        for tok, language in ((mtl, lang), (en, None)):
            try:
                ids = tok.text_tokens(text, language)
            except TextError:
                continue
            assert ids[0] == tok.start_id and ids[-1] == tok.stop_id
            assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)

    @settings(max_examples=100, deadline=None)
    @given(text=st.text(alphabet=st.sampled_from("ab 中文。.!?,;\n—é\u0301"), max_size=400),
           lang=st.sampled_from(["en", "zh", "ja", "el"]))
    def test_fuzz_split(text, lang):
        _check_split(text, split_text(text, lang, max_seconds=3.0), lang, max_s=3.0)
