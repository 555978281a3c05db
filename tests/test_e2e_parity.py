"""End-to-end parity against golden fixtures from chatterbox-tts 0.1.7 `generate()` (tiny size, no torch).

Each fixture holds what the reference's `generate(text[, language_id])` computed on a random tiny
checkpoint with its built-in voice: the text ids, T3's tokens (sampled by the reference from shared
uniforms) and first processed distributions, the tokens and mel S3Gen used, and the waveform.
Here the checkpoint is rebuilt from the weight specs and seed (T3 safetensors; s3gen.pt or
s3gen.safetensors; the committed tokenizer files), converted with our converter, and the product
path `TTS.generate` runs under `compat-0.1.7`, teacher-forced to the reference's tokens, with the
same CFM and SineGen noise. Tolerances (e2e_harness.TOLERANCES["tiny"]): processed probs 2e-5,
mel 1e-4 max abs, waveform SNR >= 30 dB over all samples and over the unclipped ones.
Regenerate: `python -m tests.reference.parity --component e2e --write-fixtures`.
"""

import json

import numpy as np
import pytest

from tests.reference import e2e_harness, text_harness
from tests.reference.weights import digest, random_conds, random_state_dict

VARIANTS = ["mtl-v2", "en"]


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request, tmp_path_factory, fixtures_dir):
    variant = request.param
    fx = dict(np.load(fixtures_dir / f"e2e_tiny_{variant}.npz"))
    seed = int(fx["seed"])
    t3 = random_state_dict(json.loads(str(fx["t3_spec"])), seed)
    s3gen = random_state_dict(json.loads(str(fx["s3gen_spec"])), seed)
    assert digest(t3) == str(fx["t3_digest"]) and digest(s3gen) == str(fx["s3gen_digest"]), \
        "rebuilt weights differ from the ones the reference ran"
    ckpt = e2e_harness.write_checkpoint(tmp_path_factory.mktemp(f"ckpt-{variant}"), variant, t3, s3gen,
                                        str(fx["s3gen_file"]))
    tokenizer = text_harness.FIXTURE_DIR / text_harness.family(variant)
    assert any(text_harness.sha256(f) == str(fx["tokenizer_sha256"]) for f in tokenizer.iterdir()), \
        "the committed tokenizer differs from the one the reference ran"
    model_dir = e2e_harness.convert_model(ckpt, tmp_path_factory.mktemp("model") / variant, variant, "tiny")
    inputs = e2e_harness.make_inputs(variant, seed)
    assert e2e_harness.inputs_digest(inputs) == str(fx["inputs_digest"]), "rebuilt noise differs"
    ref = {k[len("ref/"):]: v for k, v in fx.items() if k.startswith("ref/")}
    ours = e2e_harness.run_ours(model_dir, inputs, ref["tokens"], e2e_harness.voice_of(random_conds(seed)))
    return variant, ref, ours


def test_generate_matches_reference(converted):
    variant, ref, ours = converted
    checks = e2e_harness.compare(ref, ours, "tiny", f"e2e.tiny.{variant}")
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)
    assert len(ref["tokens"]) == e2e_harness.N_TOKENS + 1 and ref["tokens"][-1] == 6562  # codes, then EOS


def test_compare_catches_a_wrong_waveform(converted):
    variant, ref, ours = converted
    bad = {**ours, "wav_untrimmed": ours["wav_untrimmed"] * 0.9}  # -20 dB of error
    names = {c["name"].rsplit(".", 1)[-1]: c["ok"] for c in e2e_harness.compare(ref, bad, "tiny", variant)}
    assert names["wav_s3gen"] is False and names["mel"] is True


@pytest.mark.reference
@pytest.mark.parametrize("variant", ["mtl-v2", "en", "mtl-v3"])
def test_live_e2e_parity(variant):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tests.reference.parity", "--component", "e2e", "--size", "tiny",
                          "--variant", variant], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
