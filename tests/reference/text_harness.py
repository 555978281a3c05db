"""Our side of the text front-end parity checks (project env, no torch): cases, our run, comparison.

Shared by `parity.py --component text` (live reference) and tests/test_text_parity.py (committed
fixture), so both assert the same thing: punc_norm strings and token ids identical to the
reference's, for every corpus sentence in all 23 languages plus edge cases (which may hit [UNK]).

The tokenizer files are the synthetic ones make_checkpoint.py writes (the real ones cannot be
downloaded); copies live in tests/fixtures/text/{mtl,en}/ so CI needs no reference env.
"""

import hashlib
import json
import shutil
from pathlib import Path

from convert.text import CANGJIE_FILE, TOKENIZER_FILES, convert_text
from nightingale_mlx.text import SUPPORTED_LANGUAGES, Tokenizer

HERE = Path(__file__).resolve().parent
FIXTURE_DIR = HERE.parent / "fixtures" / "text"
CORPUS = FIXTURE_DIR / "corpus.json"
FIXTURE = FIXTURE_DIR / "reference_ids.json"

# Texts outside the corpus: normalization corners, case mapping, compatibility forms, literal
# bracket tokens, mixed scripts. Chars missing from the synthetic vocab become [UNK] on both sides.
EDGE_TEXTS = [
    "",
    "   ",
    "  spaced   out\ttabs\nand\r\nnewlines  ",
    "wait... what… no: yes; maybe - perhaps — sure – fine ,ok",
    "“double” and ‘single’ quotes",
    "ÉCOLE İstanbul STRASSE straße ǅemal",
    "ﬁne ½ ™ Ⅻ ＡＢＣ　full-width　space",
    "literal [SPACE] and [en] and [cj_a] tags",
    "emoji 😀 and symbols ©®",
    "mixed 中文 and 日本語 and 한국어 and ｶﾀｶﾅ",
    "母は東京へ行きました。はい、ヘリコプター！",
    "Καλημέρα; Привет! مرحبا؟ नमस्ते।",
    "ends with a colon:",
    "ends with a Chinese comma，",
]
EDGE_LANGUAGES = ["en", "zh", "ja", "ko", "ru", "he", "ar", "el", "hi", "de"]
VARIANTS = ("mtl-v2", "en")


def family(variant: str) -> str:
    return "en" if variant == "en" else "mtl"


def make_cases(variant: str) -> list:
    """[text, language] pairs: the whole corpus, then every edge text in the edge languages."""
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    cases = [[t, lang] for lang in SUPPORTED_LANGUAGES for t in corpus[lang]]
    return cases + [[t, lang] for t in EDGE_TEXTS for lang in EDGE_LANGUAGES]


def run_ours(model_dir: Path, text_config: dict, cases: list, skip_languages=()) -> dict:
    """Our punc_norm + encode per case (None for skipped languages), like ref_text.py's output."""
    tok = Tokenizer.from_model_dir(model_dir, text_config)
    norm, ids = [], []
    for text, lang in cases:
        if lang in skip_languages:
            norm.append(None)
            ids.append(None)
            continue
        n = tok.normalize(text)
        norm.append(n)
        ids.append(tok.encode(n, None if tok.kind == "en" else lang))
    return {"norm": norm, "ids": ids}


def compare(ref: dict, ours: dict, cases: list, variant: str) -> list:
    """One check per language (corpus and edge cases together), counting mismatched cases."""
    by_lang = {}
    for i, (text, lang) in enumerate(cases):
        if ours["ids"][i] is None:
            continue
        c = by_lang.setdefault(lang, {"name": f"text.{variant}.{lang}", "cases": 0, "mismatches": 0})
        c["cases"] += 1
        if ours["norm"][i] != ref["norm"][i] or ours["ids"][i] != ref["ids"][i]:
            c["mismatches"] += 1
            c.setdefault("first_mismatch", {"text": text, "ref": ref["ids"][i], "ours": ours["ids"][i],
                                            "ref_norm": ref["norm"][i], "ours_norm": ours["norm"][i]})
    checks = list(by_lang.values())
    for c in checks:
        c["ok"] = c["mismatches"] == 0  # tolerance: exact equality of every id
    return checks


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fixture_checkpoint(variant: str, dest: Path) -> Path:
    """An original-layout checkpoint dir holding the committed synthetic tokenizer files."""
    src = FIXTURE_DIR / family(variant)
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copyfile(f, dest / f.name)
    return dest


def text_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    """parity.py entry. The tokenizer files do not depend on size or seed (accepted for uniformity)."""
    from .parity import run_ref

    ckpt, model_dir = work / "ckpt", work / "model"
    run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed,
            "--out", ckpt, "--only", "tokenizer")
    cases = make_cases(variant)
    (work / "in.json").write_text(json.dumps({"cases": cases}, ensure_ascii=False), "utf-8")
    run_ref("ref_text.py", "--ckpt", ckpt, "--variant", variant, "--inputs", work / "in.json",
            "--out", work / "ref.json")
    ref = json.loads((work / "ref.json").read_text(encoding="utf-8"))
    model_dir.mkdir()
    text = convert_text(ckpt, variant, model_dir)
    checks = compare(ref, run_ours(model_dir, text, cases), cases, variant)
    if write_fixtures:
        files = [TOKENIZER_FILES[variant]] + ([] if variant == "en" else [CANGJIE_FILE])
        dest = FIXTURE_DIR / family(variant)
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(ckpt / name, dest / name)
        fixture = json.loads(FIXTURE.read_text(encoding="utf-8")) if FIXTURE.exists() else {}
        fixture[variant] = {"seed": seed, "files": {n: sha256(dest / n) for n in files},
                            "cases": cases, "norm": ref["norm"], "ids": ref["ids"]}
        FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False), "utf-8")
    return checks
