"""A synthetic GPT-2 tokenizer in the original (slow) file format, for tests and the synthetic model.

The real Turbo tokenizer cannot be downloaded here. This one has its layout: byte-level BPE (the 256
byte symbols), a few merges, `<|endoftext|>` at 50256, placeholders up to 50257 ids, and added
bracketed tags from 50257 up to 50276 ids in all. The tag names are stand-ins (the real list is
not verified), except that `[laugh]`, `[chuckle]` and `[sigh]` are named in the issue.
Plain Python (json only): the reference env loads this file by path to write fixtures.
"""

import json
from pathlib import Path

GPT2_BASE_VOCAB = 50257  # GPT-2's own ids, <|endoftext|> last
TURBO_TEXT_VOCAB = 50276
ENDOFTEXT = "<|endoftext|>"
TAGS = ["[laugh]", "[chuckle]", "[sigh]", "[cough]", "[gasp]", "[groan]", "[sniff]", "[shush]",
        "[clear throat]", "[whisper]", "[cry]", "[breath]", "[hum]", "[yawn]", "[scream]", "[sneeze]",
        "[tag17]", "[tag18]", "[tag19]"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("Ġ", "s")]


def _byte_symbols() -> list:
    """GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def vocab_and_merges():
    symbols = _byte_symbols() + ["".join(m) for m in MERGES]
    vocab = {s: i for i, s in enumerate(symbols)}
    for i in range(len(vocab), GPT2_BASE_VOCAB - 1):
        vocab[f"<unused{i}>"] = i  # unreachable: no merge builds it
    vocab[ENDOFTEXT] = GPT2_BASE_VOCAB - 1
    return vocab, MERGES


def write_gpt2_tokenizer(directory) -> list:
    """Writes vocab.json, merges.txt, added_tokens.json, tokenizer_config.json and
    special_tokens_map.json (what AutoTokenizer.from_pretrained reads); returns the file names."""
    directory = Path(directory)
    vocab, merges = vocab_and_merges()
    added = {t: GPT2_BASE_VOCAB + i for i, t in enumerate(TAGS)}
    assert len(vocab) + len(added) == TURBO_TEXT_VOCAB
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")
    (directory / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), "utf-8")
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    (directory / "special_tokens_map.json").write_text(json.dumps(special), "utf-8")
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
              "add_bos_token": False, **special,
              "added_tokens_decoder": {
                  str(GPT2_BASE_VOCAB - 1): {"content": ENDOFTEXT, "special": True, "lstrip": False,
                                             "rstrip": False, "normalized": True, "single_word": False},
                  **{str(i): {"content": t, "special": False, "lstrip": False, "rstrip": False,
                              "normalized": True, "single_word": False} for t, i in added.items()}}}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    return ["vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"]
