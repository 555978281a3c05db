"""Conversion step for the text front end: copies the tokenizer files into the model dir.

The multilingual checkpoints carry `grapheme_mtl_merged_expanded_v1.json` (v2 and v3) and the zh
table `Cangjie5_TC.json`; the English one carries `tokenizer.json`. The reference fetches the
Cangjie table into an HF cache inside the checkpoint dir, so that layout is searched too. A
missing table is not an error here: only Chinese needs it, and it fails clearly at encode time.
"""

import json
import shutil
from pathlib import Path
from typing import Optional

from nightingale_mlx.config import TEXT_PREPROC, TURBO_VARIANTS, ModelConfig, TextConfig

from .sanitize import ConversionError

TOKENIZER_FILES = {
    "en": "tokenizer.json",
    "mtl-v2": "grapheme_mtl_merged_expanded_v1.json",
    "mtl-v3": "grapheme_mtl_merged_expanded_v1.json",
    "turbo": "tokenizer.json",  # written by us from the GPT-2 files below
    "nano": "tokenizer.json",
}
# What AutoTokenizer.from_pretrained may read from a Turbo/Nano dir: a fast tokenizer.json, or the
# slow files (vocab + merges) with added tokens in added_tokens.json / tokenizer_config.json.
GPT2_TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                        "tokenizer_config.json", "special_tokens_map.json"]
CANGJIE_FILE = "Cangjie5_TC.json"
HF_CACHE_FOLDER = "models--ResembleAI--chatterbox"  # where the reference's hf_hub_download puts it
DEFAULT_TEXT_PREPROC = "v2"  # the reference HEAD's path, for v3 as well (spec §2 caveat)


def text_files(variant: str) -> list:
    """The text files a variant's checkpoint holds (for fetching from the hub)."""
    if variant in TURBO_VARIANTS:
        return list(GPT2_TOKENIZER_FILES)
    return [TOKENIZER_FILES[variant]] + ([] if variant == "en" else [CANGJIE_FILE])


def _added_tokens(checkpoint: Path) -> list:
    """[(id, AddedToken)] from added_tokens.json and tokenizer_config.json's added_tokens_decoder."""
    from tokenizers import AddedToken

    found = {}
    path = checkpoint / "added_tokens.json"
    if path.is_file():
        for content, i in json.loads(path.read_text(encoding="utf-8")).items():
            found[int(i)] = AddedToken(content, special=False)
    path = checkpoint / "tokenizer_config.json"
    if path.is_file():
        for i, t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder", {}).items():
            flags = {k: t[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in t}
            found[int(i)] = AddedToken(t["content"], **flags)
    return sorted(found.items())


def gpt2_tokenizer(checkpoint: Path):
    """The Turbo/Nano tokenizer as one `tokenizers` object: their tokenizer.json if present, else
    the slow GPT-2 files assembled as transformers' GPT-2 converter does (byte-level BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    fast = checkpoint / "tokenizer.json"
    if fast.is_file():
        try:
            return Tokenizer.from_file(str(fast))
        except Exception as e:  # the Rust side raises bare Exceptions on bad JSON
            raise ConversionError(f"{fast}: not a tokenizers JSON file ({e})") from e
    vocab, merges = checkpoint / "vocab.json", checkpoint / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise ConversionError(f"{checkpoint}: no GPT-2 tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    try:
        bpe = models.BPE.from_file(str(vocab), str(merges), continuing_subword_prefix="", end_of_word_suffix="",
                                   fuse_unk=False)
    except Exception as e:
        raise ConversionError(f"{checkpoint}: unreadable vocab.json / merges.txt ({e})") from e
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for i, added in _added_tokens(checkpoint):
        if tok.token_to_id(added.content) == i:
            continue  # already in the vocab (<|endoftext|>)
        (tok.add_special_tokens if added.special else tok.add_tokens)([added])
        if tok.token_to_id(added.content) != i:
            raise ConversionError(f"{checkpoint}: added token {added.content!r} should have id {i}, "
                                  f"got {tok.token_to_id(added.content)}; ids must follow the vocab")
    return tok


def convert_gpt2_text(checkpoint: Path, out: Path) -> dict:
    tok = gpt2_tokenizer(Path(checkpoint))
    name = TOKENIZER_FILES["turbo"]
    tok.save(str(Path(out) / name))
    return TextConfig(tokenizer=name, kind="gpt2", text_preproc=None).to_dict()


def _find_cangjie(checkpoint: Path) -> Optional[Path]:
    direct = checkpoint / CANGJIE_FILE
    if direct.is_file():
        return direct
    cached = sorted((checkpoint / HF_CACHE_FOLDER).glob(f"snapshots/*/{CANGJIE_FILE}"))
    return cached[0] if cached else None


def _check_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    try:
        vocab = Tokenizer.from_file(str(path)).get_vocab()
    except Exception as e:  # the Rust side raises bare Exceptions on bad JSON
        raise ConversionError(f"{path}: not a tokenizers JSON file ({e})") from e
    missing = [t for t in ("[START]", "[STOP]") if t not in vocab]
    if missing:
        raise ConversionError(f"{path}: tokenizer lacks {missing}; not a Chatterbox tokenizer")


def _check_cangjie(path: Path) -> None:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(entries, list) and all(isinstance(e, str) and "\t" in e for e in entries)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: unreadable Cangjie table ({e})") from e
    if not ok:
        raise ConversionError(f'{path}: expected a JSON list of "char<TAB>code" strings')


def convert_text(checkpoint: Path, variant: str, out: Path, text_preproc: Optional[str] = None) -> dict:
    """Copies the tokenizer (and Cangjie table) into `out`; returns the config `text` section."""
    checkpoint, out = Path(checkpoint), Path(out)
    if variant in TURBO_VARIANTS:
        if text_preproc is not None:
            raise ConversionError("text_preproc applies to multilingual checkpoints only")
        return convert_gpt2_text(checkpoint, out)
    name = TOKENIZER_FILES[variant]
    source = checkpoint / name
    if not source.is_file():
        raise ConversionError(f"{checkpoint}: no {name} (the {variant} tokenizer)")
    _check_tokenizer(source)
    shutil.copyfile(source, out / name)
    if variant == "en":
        if text_preproc is not None:
            raise ConversionError("text_preproc applies to multilingual checkpoints only")
        return TextConfig(tokenizer=name, kind="en", text_preproc=None).to_dict()

    text_preproc = text_preproc or DEFAULT_TEXT_PREPROC
    if text_preproc not in TEXT_PREPROC:
        raise ConversionError(
            f"unknown text_preproc {text_preproc!r}; expected one of {', '.join(TEXT_PREPROC)}"
        )
    table = _find_cangjie(checkpoint)
    if table is not None:
        _check_cangjie(table)
        shutil.copyfile(table, out / CANGJIE_FILE)
    return TextConfig(
        tokenizer=name, kind="mtl", text_preproc=text_preproc,
        cangjie=CANGJIE_FILE if table is not None else None,
    ).to_dict()


def text_step(checkpoint: Path, variant: str, recipe, config: ModelConfig, out: Path, options: dict):
    """convert.STEPS entry: fills `config.text`. Option `text_preproc`: "v2" or "nfkd_fullcase"."""
    config.text = convert_text(checkpoint, variant, out, options.get("text_preproc"))
