"""Proves a written checkpoint folder works in the (patched) reference, end to end. Ref env only.

    $NIGHTINGALE_REF_PYTHON tests/reference/check_load.py DIR

Loads DIR the way `from_local` does (multilingual or English, from DIR/test_manifest.json), then
runs two short `generate()` calls: one with the built-in voice and one cloning a synthetic 3 s
prompt (VoiceEncoder, S3 tokenizer, CAMPPlus and the reference mel). Random weights make garbage
audio; this only shows nothing crashes and the output is finite.

T3's tokens are chosen by the harness (MultinomialSpy): a few valid speech codes, then EOS. Random
sampling would run all 1000 steps and, on the multilingual path, hand ids >= 6561 to S3Gen's
6561-row embedding (the reference does not filter them there).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import patches  # noqa: E402

SPEECH_CODES = 6561  # T3's stop token is 6562
STOP_SPEECH = 6562
T3_FILES = {"mtl-v3": "t3_mtl23ls_v3.safetensors"}  # from_local's own name covers mtl-v2
PROMPT_SR = 24000


def short_sequence(n_tokens: int):
    """Chooser for MultinomialSpy: the most likely valid code for n_tokens steps, then EOS."""

    def choose(step, probs):
        return int(np.argmax(probs[:SPEECH_CODES])) if step < n_tokens else STOP_SPEECH

    return choose


def synthetic_prompt(path: Path, seconds: float = 3.0) -> None:
    """A voiced-sounding test signal: a gliding 3-harmonic tone plus a little noise."""
    import soundfile

    t = np.arange(int(seconds * PROMPT_SR)) / PROMPT_SR
    phase = 2 * np.pi * np.cumsum(110 + 40 * np.sin(2 * np.pi * 0.5 * t)) / PROMPT_SR
    wav = sum(0.2 / k * np.sin(k * phase) for k in (1, 2, 3))
    wav += 0.01 * np.random.default_rng(0).standard_normal(t.size)
    soundfile.write(str(path), wav.astype(np.float32), PROMPT_SR)


def load(ckpt: Path, variant: str):
    if variant == "en":
        from chatterbox.tts import ChatterboxTTS

        return ChatterboxTTS.from_local(ckpt, "cpu")
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS

    if variant in T3_FILES:
        patches.use_t3_file(T3_FILES[variant])
    return ChatterboxMultilingualTTS.from_local(ckpt, "cpu")


def run_generate(tts, variant: str, text: str, lang: str, n_tokens: int, prompt=None):
    spy = patches.MultinomialSpy(short_sequence(n_tokens))
    patches.install_multinomial_spy(spy)
    kwargs = {} if variant == "en" else {"language_id": lang}
    start = time.perf_counter()
    wav = tts.generate(text, audio_prompt_path=prompt, **kwargs)
    seconds = time.perf_counter() - start
    wav = wav.numpy()
    assert np.isfinite(wav).all(), "non-finite audio"
    assert wav.shape[0] == 1 and wav.shape[1] > 0, wav.shape
    print(f"generate[{lang}{' +prompt' if prompt else ''}]: {len(spy.probs)} T3 steps, "
          f"wav {wav.shape} @ {tts.sr} Hz, peak {np.abs(wav).max():.3f}, {seconds:.2f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("--tokens", type=int, default=12, help="speech tokens T3 emits before EOS")
    args = p.parse_args(argv)

    import torch

    # Tiny tensors gain nothing from intra-op threads, and on a busy machine the OpenMP pool
    # turns microsecond ops into millisecond ones (seen: 2 threads, 30x slower flow).
    torch.set_num_threads(1)
    manifest = json.loads((args.ckpt / "test_manifest.json").read_text())
    variant = manifest["variant"]
    patches.apply_sizes(manifest["size"])
    patches.offline_resources(args.ckpt)

    start = time.perf_counter()
    tts = load(args.ckpt, variant)
    print(f"from_local({variant}, {manifest['size']}): {time.perf_counter() - start:.2f} s")

    corpus = json.loads((HERE.parent / "fixtures" / "text" / "corpus.json").read_text("utf-8"))
    langs = ["en"] if variant == "en" else ["en", "zh"]
    for lang in langs:
        run_generate(tts, variant, corpus[lang][0], lang, args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.wav"
        synthetic_prompt(prompt)
        run_generate(tts, variant, corpus[langs[-1]][1], langs[-1], args.tokens, prompt=prompt)
    print("ok")


if __name__ == "__main__":
    main()
