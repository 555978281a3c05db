"""Writes a random-weight Chatterbox checkpoint in the original file names and formats.

Runs under the reference env's Python (it needs torch to write `.pt` files):
    $NIGHTINGALE_REF_PYTHON tests/reference/make_checkpoint.py --size tiny --variant mtl-v2 --seed 0 --out DIR

Weights come from `weights.py` (numpy, keyed by seed and tensor name), so CI can rebuild the
same tensors without torch. The key lists come from instantiating the (size-patched) reference.
"""

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from unicodedata import category, normalize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import patches  # noqa: E402
from weights import conds_digest, digest, random_conds, random_state_dict  # noqa: E402

T3_FILES = {
    "en": "t3_cfg.safetensors",
    "mtl-v2": "t3_mtl23ls_v2.safetensors",
    "mtl-v3": "t3_mtl23ls_v3.safetensors",
    "turbo": "t3_turbo_v1.safetensors",
    "nano": "t3_nano_v1.safetensors",
}
TURBO = ("turbo", "nano")
CORPUS = HERE.parent / "fixtures" / "text" / "corpus.json"


def torch_spec(module):
    """[(name, shape, numpy dtype name)] of a module's state dict, in its own order."""
    return [
        (k, tuple(v.shape), str(v.numpy().dtype) if v.dtype.is_floating_point is False else "float32")
        for k, v in module.state_dict().items()
    ]


def load_numpy_state(module, state):
    import torch

    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)


def turbo_hp(variant: str):
    """tts_turbo.from_local's T3 hyperparameters (Nano: the GPT2_small config of patches.py)."""
    from chatterbox.models.t3.modules.t3_config import T3Config

    hp = T3Config(text_tokens_dict_size=50276)
    hp.llama_config_name = patches.NANO_CONFIG if variant == "nano" else "GPT2_medium"
    hp.speech_tokens_dict_size = 6563
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


def build_t3(variant: str):
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config

    if variant in TURBO:
        patches.add_nano_config()
        return T3(turbo_hp(variant)).eval()
    hp = T3Config.english_only() if variant == "en" else T3Config.multilingual()
    return T3(hp).eval()


def write_t3(variant: str, seed: int, out: Path) -> dict:
    from safetensors.torch import save_file
    import torch

    t3 = build_t3(variant)
    spec = torch_spec(t3)
    state = random_state_dict(spec, seed)
    load_numpy_state(t3, state)  # proves the spec is exactly what the reference loads strictly
    save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(out / T3_FILES[variant]))
    return {"file": T3_FILES[variant], "spec": [spec_entry(s) for s in spec], "digest": digest(state)}


def is_english(variant: str) -> bool:
    return variant == "en" or variant in TURBO  # Turbo/Nano files are safetensors too


def save_torch(state: dict, path: Path) -> None:
    """torch.save of a plain tensor dict, as the real `.pt` weight files are."""
    import torch

    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(path))


def save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(path))


def spec_entry(s) -> list:
    return list(s[:2]) + [s[2]]


# ---------------------------------------------------------------- S3Gen


def build_s3gen(meanflow: bool = False):
    from chatterbox.models.s3gen import S3Gen

    return S3Gen(meanflow=meanflow).eval()


def write_s3gen(variant: str, seed: int, out: Path) -> dict:
    """`s3gen.pt` (multilingual, loaded strictly) or `s3gen.safetensors` (English, strict=False).

    The tokenizer's mel filterbank and window are buffers the module computes itself
    (`S3Gen.ignore_state_dict_missing`): they keep those real values instead of random ones.
    The `.pt` holds them like the real one must (strict load); the English file leaves them out,
    which the reference's strict=False load accepts, so a converter sees both layouts.
    """
    import torch
    from safetensors.torch import load_file

    s3gen = build_s3gen(meanflow=variant in TURBO)
    computed = set(s3gen.ignore_state_dict_missing)
    own = s3gen.state_dict()
    spec = [s for s in torch_spec(s3gen) if s[0] not in computed]
    state = random_state_dict(spec, seed)
    if variant in TURBO:
        # tts_turbo loads s3gen_meanflow.safetensors strictly: the computed buffers are stored too.
        path = out / "s3gen_meanflow.safetensors"
        save_safetensors({k: state[k] if k in state else own[k].numpy() for k in own}, path)
        s3gen.load_state_dict(load_file(str(path)), strict=True)
    elif is_english(variant):
        path = out / "s3gen.safetensors"
        save_safetensors(state, path)
        result = s3gen.load_state_dict(load_file(str(path)), strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) == computed, result
    else:
        path = out / "s3gen.pt"
        save_torch({k: state[k] if k in state else own[k].numpy() for k in own}, path)  # own order
        s3gen.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict
    return {
        "file": path.name,
        "spec": [spec_entry(s) for s in spec],
        "computed": sorted(computed),
        "digest": digest(state),
    }


# ---------------------------------------------------------------- VoiceEncoder


def write_ve(variant: str, seed: int, out: Path) -> dict:
    import torch
    from chatterbox.models.voice_encoder import VoiceEncoder
    from safetensors.torch import load_file

    ve = VoiceEncoder().eval()
    spec = torch_spec(ve)
    state = random_state_dict(spec, seed)
    if is_english(variant):
        path = out / "ve.safetensors"
        save_safetensors(state, path)
        ve.load_state_dict(load_file(str(path)))
    else:
        path = out / "ve.pt"
        save_torch(state, path)
        ve.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return {"file": path.name, "spec": [spec_entry(s) for s in spec], "digest": digest(state)}


# ---------------------------------------------------------------- built-in voice


def write_conds(variant: str, seed: int, out: Path) -> dict:
    """`conds.pt`: torch.save({'t3': T3Cond.__dict__, 'gen': dict}), as Conditionals.save does."""
    import torch
    from chatterbox.mtl_tts import Conditionals

    conds = random_conds(seed)
    as_torch = {
        part: {k: None if v is None else torch.from_numpy(v) for k, v in d.items()}
        for part, d in conds.items()
    }
    path = out / "conds.pt"
    torch.save(as_torch, str(path))
    Conditionals.load(path, map_location="cpu")  # what from_local does with it
    return {"file": path.name, "digest": conds_digest(conds)}


# ---------------------------------------------------------------- text tokenizer
#
# The real vocabularies cannot be downloaded, so the tokenizer is a synthetic grapheme vocabulary
# in the real file's format (HF `tokenizers` JSON: BPE model, Whitespace pre-tokenizer, bracketed
# tokens as added tokens), with the real size and the known fixed ids. It covers every grapheme the
# reference front end produces for tests/fixtures/text/corpus.json, found by running that front end.

TOKENIZER_FILES = {
    "en": "tokenizer.json",
    "mtl-v2": "grapheme_mtl_merged_expanded_v1.json",
    "mtl-v3": "grapheme_mtl_merged_expanded_v1.json",
}
VOCAB_SIZE = {"en": 704, "mtl": 2454}  # T3Config.is_multilingual keys on 2454
SPECIAL_IDS = {  # [STOP], [UNK], [START] are known; [SPACE] = 2 per Nightingale's encodings
    "[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[PAD]": 3, "[SEP]": 4, "[CLS]": 5, "[MASK]": 6,
    "[START]": 255,
}
LANGUAGES = "ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh".split()
# Language tags from 704 in alphabetical order put [en] at 708, the id reported for the real vocab.
FIRST_LANGUAGE_ID = 704
CJ_TOKENS = [f"[cj_{c}]" for c in ".0123456789abcdefghijklmnopqrstuvwxyz"]
# A few merges that occur in the corpus (one chained), so the BPE merge path runs too.
MERGES = [("a", "r"), ("ar", "e"), ("e", "n"), ("o", "u")]
BRACKET_TOKEN = re.compile(r"\[(?:SPACE|[a-z]{2}|cj_[0-9a-z.])\]")


def load_corpus() -> dict:
    return json.loads(CORPUS.read_text(encoding="utf-8"))


class _Recorder:
    """Stands in for the HF Tokenizer inside the reference's encode(): records the final text."""

    def __init__(self):
        self.texts = []

    def encode(self, text):
        self.texts.append(text)
        return type("Encoding", (), {"ids": []})()


def reference_texts(variant: str, out: Path, corpus: dict) -> list:
    """The strings the reference hands to its HF tokenizer for the corpus (after punc_norm,
    lowercasing, NFKD, Cangjie/kakasi, language tag and [SPACE])."""
    recorder = _Recorder()
    if is_english(variant):
        from chatterbox.models.tokenizers.tokenizer import EnTokenizer
        from chatterbox.tts import punc_norm

        tok = EnTokenizer.__new__(EnTokenizer)
        tok.tokenizer = recorder
        for text in corpus["en"]:
            tok.encode(punc_norm(text))
        return recorder.texts
    from chatterbox.models.tokenizers.tokenizer import ChineseCangjieConverter, MTLTokenizer
    from chatterbox.mtl_tts import punc_norm

    tok = MTLTokenizer.__new__(MTLTokenizer)
    tok.tokenizer = recorder
    tok.cangjie_converter = ChineseCangjieConverter(out)
    for lang in LANGUAGES:
        for text in corpus[lang]:
            tok.encode(punc_norm(text), language_id=lang)
    return recorder.texts


def graphemes(texts: list) -> list:
    chars = {c for t in texts for c in BRACKET_TOKEN.sub("", t)}
    assert not any(c.isspace() for c in chars), "spaces should all have become [SPACE]"
    return sorted(chars)


def assemble_vocab(size: int, fixed: dict, tokens: list) -> dict:
    """fixed ids first, then `tokens` on the free ids in order, then placeholders up to `size`."""
    taken = set(fixed.values())
    free = iter(i for i in range(size) if i not in taken)
    vocab = dict(fixed)
    for tok in tokens:
        vocab[tok] = next(free)  # StopIteration here means the vocab is too small
    for i in free:
        vocab[f"<unused{i}>"] = i  # unreachable: no merge ever builds it
    assert len(vocab) == size and sorted(vocab.values()) == list(range(size))
    return vocab


def tokenizer_json(vocab: dict) -> dict:
    added = sorted((i, t) for t, i in vocab.items() if t.startswith("[") and t.endswith("]"))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, t in added
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": [f"{a} {b}" for a, b in MERGES],
        },
    }


def cangjie_table(zh_texts: list) -> list:
    """`Cangjie5_TC.json` entries ("char\tcode") for the corpus's Chinese characters.

    Codes are synthetic (2-4 letters from the code point). Built in: a code shared by two chars
    (index digit 1), a char listed with two codes (the reference keeps the last), and a char that
    is the 11th with its code (two index digits, "10"), behind ten filler chars not in the corpus.
    """
    text = normalize("NFKD", "".join(zh_texts).lower())  # what the converter is handed
    chars = sorted({c for c in text if category(c) == "Lo"})
    assert len(chars) >= 4, "the zh corpus needs at least four distinct characters"

    def code(c):
        n = ord(c)
        return "".join(chr(97 + (n // 26**i) % 26) for i in range(2 + n % 3))

    fillers = [chr(cp) for cp in range(0x4E00, 0x4F00) if chr(cp) not in chars][:10]
    shared, two_codes, eleventh = chars[0], chars[2], chars[3]
    entries = [(shared, code(shared)), (chars[1], code(shared))]
    entries += [(two_codes, "zzzz"), (two_codes, code(two_codes))]
    entries += [(f, "yyy") for f in fillers] + [(eleventh, "yyy")]
    entries += [(c, code(c)) for c in chars[4:]]
    return [f"{c}\t{k}" for c, k in entries]


def write_gpt2_tokenizer(out: Path) -> dict:
    """Turbo/Nano: the synthetic GPT-2 files (nightingale_mlx/text/gpt2_files.py, loaded by path)."""
    import importlib.util

    path = HERE.parents[1] / "nightingale_mlx" / "text" / "gpt2_files.py"
    spec = importlib.util.spec_from_file_location("gpt2_files", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = module.write_gpt2_tokenizer(out)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(out)) == 50276
    digest_ = hashlib.sha256(b"".join((out / n).read_bytes() for n in names)).hexdigest()
    return {"file": names[0], "files": names, "sha256": digest_}


def write_tokenizer(variant: str, seed: int, out: Path) -> dict:
    if variant in TURBO:
        return write_gpt2_tokenizer(out)
    corpus = load_corpus()
    result = {"file": TOKENIZER_FILES[variant]}
    if is_english(variant):
        fixed = dict(SPECIAL_IDS)
        size = VOCAB_SIZE["en"]
    else:
        table = cangjie_table(corpus["zh"])
        (out / patches.CANGJIE_FILE).write_text(json.dumps(table, ensure_ascii=False), "utf-8")
        patches.offline_resources(out)
        fixed = dict(SPECIAL_IDS)
        fixed.update({f"[{lang}]": FIRST_LANGUAGE_ID + i for i, lang in enumerate(LANGUAGES)})
        fixed.update({t: FIRST_LANGUAGE_ID + len(LANGUAGES) + i for i, t in enumerate(CJ_TOKENS)})
        size = VOCAB_SIZE["mtl"]
        result["cangjie"] = patches.CANGJIE_FILE
    merged = ["".join(m) for m in MERGES]
    vocab = assemble_vocab(size, fixed, graphemes(reference_texts(variant, out, corpus)) + merged)
    path = out / result["file"]
    path.write_text(json.dumps(tokenizer_json(vocab), ensure_ascii=False, indent=1), "utf-8")
    check_tokenizer(variant, path, corpus, vocab)
    result["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def check_tokenizer(variant: str, path: Path, corpus: dict, vocab: dict) -> None:
    """Loads the file with the reference's own tokenizer class: the corpus must encode without
    [UNK], and the merges must fire."""
    if is_english(variant):
        from chatterbox.models.tokenizers.tokenizer import EnTokenizer
        from chatterbox.tts import punc_norm

        tok = EnTokenizer(str(path))
        ids = [i for t in corpus["en"] for i in tok.encode(punc_norm(t))]
    else:
        from chatterbox.models.tokenizers.tokenizer import MTLTokenizer
        from chatterbox.mtl_tts import punc_norm

        tok = MTLTokenizer(str(path))
        assert tok.cangjie_converter.word2cj, "the Cangjie table did not load"
        ids = [
            i for lang in LANGUAGES for t in corpus[lang] for i in tok.encode(punc_norm(t), lang)
        ]
        assert tok.encode("hi", "en")[0] == 708
    assert SPECIAL_IDS["[UNK]"] not in ids, "a corpus grapheme is missing from the vocab"
    assert tok.tokenizer.get_vocab_size() == len(vocab)
    assert any(vocab["".join(m)] in ids for m in MERGES), "no merge fired on the corpus"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--variant", choices=sorted(T3_FILES), default="mtl-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--only", default="all", help="comma list of t3,s3gen,ve,conds,tokenizer; default all"
    )
    args = p.parse_args(argv)

    patches.apply_sizes(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {
        "t3": write_t3,
        "s3gen": write_s3gen,
        "ve": write_ve,
        "conds": write_conds,
        "tokenizer": write_tokenizer,
    }
    wanted = list(parts) if args.only == "all" else args.only.split(",")
    unknown = sorted(set(wanted) - set(parts))
    if unknown:
        p.error(f"unknown parts {unknown}; known: {sorted(parts)}")
    manifest = read_manifest(args.out, args.size, args.variant, args.seed)
    for name in wanted:
        manifest["files"][name] = parts[name](args.variant, args.seed, args.out)
    (args.out / MANIFEST).write_text(json.dumps(manifest))
    print(json.dumps({k: v["file"] for k, v in manifest["files"].items()}))


MANIFEST = "test_manifest.json"


def read_manifest(out: Path, size: str, variant: str, seed: int) -> dict:
    """The folder's manifest, kept when it describes the same checkpoint (so --only adds parts)."""
    fresh = {"size": size, "variant": variant, "seed": seed, "files": {}}
    path = out / MANIFEST
    if not path.exists():
        return fresh
    old = json.loads(path.read_text())
    same = all(old.get(k) == fresh[k] for k in ("size", "variant", "seed"))
    return old if same else fresh


if __name__ == "__main__":
    main()
