"""Turbo and Nano parity against golden fixtures from chatterbox-tts 0.1.7 `ChatterboxTurboTTS`
(tiny size, no torch).

Each fixture holds what the reference computed on a random tiny checkpoint (Turbo: GPT-2 4 x 128;
Nano: the GPT-2 small config patches.py adds to the reference's table, at 2 x 64): T3's
`inference_turbo` logits, processed distributions and tokens (teacher-forced, greedy, sampled),
`generate()`'s text ids, S3Gen tokens (3 silence tokens appended), meanflow mel and waveform, the
waveform again with an injected voiced F0 (the harmonic source throughout), and
`prepare_conditionals` on a 7.2 s clip (-27 LUFS gain, prompt tokens, embeddings). Here the
checkpoint is rebuilt from the weight specs and seed in the original files, converted with our
converter (Nano with no Nano-specific code), and run through our product paths with the same
token choices and noise. Tolerances (turbo_harness): T3 logits 2e-4, probs 2e-5; mel 1e-4; SNR
>= 30 dB; loudness gain 1e-6 relative; cloning tolerances for the voice.
Regenerate: `python -m tests.reference.parity --component turbo --write-fixtures`.
"""

import json

import numpy as np
import pytest

from tests.reference import turbo_harness

VARIANTS = ["turbo", "nano"]


@pytest.fixture(scope="module", params=VARIANTS)
def run(request, tmp_path_factory, fixtures_dir):
    variant = request.param
    fx = dict(np.load(fixtures_dir / f"turbo_tiny_{variant}.npz"))
    seed = int(fx["seed"])
    specs = {k: json.loads(str(fx[f"spec/{k}"])) for k in ("t3", "s3gen", "ve")}
    ckpt = tmp_path_factory.mktemp(f"ckpt-{variant}")
    digests = turbo_harness.write_checkpoint(ckpt, variant, specs, seed)
    for k in ("t3", "s3gen", "ve"):
        assert digests[k] == str(fx[f"digest/{k}"]), f"rebuilt {k} weights differ from the ones the reference ran"
    assert digests["tokenizer"] == str(fx["tokenizer_sha256"]), "the tokenizer files differ from the reference's"
    model_dir = turbo_harness.convert_model(ckpt, tmp_path_factory.mktemp("model") / variant, variant)
    inputs = turbo_harness.make_inputs(variant, seed)
    assert turbo_harness.inputs_digest(inputs) == str(fx["inputs_digest"]), "rebuilt noise differs"
    ref = turbo_harness.sub(fx, "ref/")
    checks = turbo_harness.run_and_compare(model_dir, inputs, ref, seed, "tiny", variant)
    return variant, model_dir, checks


def test_turbo_matches_reference(run):
    variant, _, checks = run
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)
    names = {c["name"].split(f"turbo.tiny.{variant}.", 1)[1] for c in checks}
    for part in ("t3.teacher.logits_both_rows", "t3.greedy.token_choices", "t3.sample.token_choices", "e2e.mel",
                 "e2e.wav_s3gen", "e2e.wav_injected_f0", "e2e.s3gen_tokens", "e2e.flow_steps",
                 "voice.loudness_gain", "voice.speaker_emb"):
        assert part in names, f"check {part} did not run"


def test_nano_sizes_come_from_the_tensors(run):
    from nightingale_mlx.model_io import load_config

    variant, model_dir, _ = run
    t3 = load_config(model_dir).t3
    assert t3.backbone == "gpt2" and not t3.use_perceiver and not t3.learned_input_pos
    assert (t3.hidden_size, t3.num_hidden_layers) == {"turbo": (128, 4), "nano": (64, 2)}[variant]


@pytest.mark.reference
@pytest.mark.parametrize("variant", VARIANTS)
def test_live_turbo_parity(variant):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tests.reference.parity", "--component", "turbo", "--size", "tiny",
                          "--variant", variant], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("variant", VARIANTS)
def test_live_turbo_parity_full_size(variant):
    """Full-size random weights (GPT-2 medium / small T3, full meanflow S3Gen): opt-in, minutes per variant."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tests.reference.parity", "--component", "turbo", "--size", "full",
                          "--variant", variant], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
