"""Runs the reference text front end (chatterbox-tts 0.1.7) on texts and records punc_norm + ids.

Runs in the reference env: `ref_text.py --ckpt DIR --variant mtl-v2|en --inputs in.json --out out.json`.
`in.json` is `{"cases": [[text, language], ...]}`; `out.json` is `{"norm": [...], "ids": [...]}`,
one entry per case: the reference's `punc_norm(text)` and `tokenizer.encode(punc_norm(text), lang)`.
Offline resources go through `patches.offline_resources` (Cangjie table from DIR, pkuseg hidden),
so Chinese is unsegmented here exactly as on our side without pkuseg.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import patches  # noqa: E402

TOKENIZER_FILES = {
    "en": "tokenizer.json",
    "mtl-v2": "grapheme_mtl_merged_expanded_v1.json",
    "mtl-v3": "grapheme_mtl_merged_expanded_v1.json",
}


def main(argv=None):
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--variant", required=True, choices=sorted(TOKENIZER_FILES))
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    patches.offline_resources(args.ckpt)
    path = str(args.ckpt / TOKENIZER_FILES[args.variant])
    if args.variant == "en":
        from chatterbox.models.tokenizers.tokenizer import EnTokenizer
        from chatterbox.tts import punc_norm

        tok = EnTokenizer(path)
        encode = lambda text, lang: tok.encode(text)  # noqa: E731 (no language on the English model)
    else:
        from chatterbox.models.tokenizers.tokenizer import MTLTokenizer
        from chatterbox.mtl_tts import punc_norm

        tok = MTLTokenizer(path)
        assert tok.cangjie_converter.word2cj, "the Cangjie table did not load"
        assert tok.cangjie_converter.segmenter is None, "pkuseg should be hidden (offline)"
        encode = lambda text, lang: tok.encode(text, language_id=lang)  # noqa: E731

    cases = json.loads(args.inputs.read_text(encoding="utf-8"))["cases"]
    norm = [punc_norm(text) for text, _ in cases]
    ids = [list(map(int, encode(n, lang))) for n, (_, lang) in zip(norm, cases)]
    args.out.write_text(json.dumps({"norm": norm, "ids": ids}, ensure_ascii=False), "utf-8")


if __name__ == "__main__":
    main()
