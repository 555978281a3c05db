"""Voice-cloning parity against golden fixtures from chatterbox-tts 0.1.7 (tiny size, no torch).

The fixture holds the reference's outputs and intermediates for the committed speech clips
(tests/fixtures/audio) plus the cloning tensors' key list and seed. The weights are rebuilt in
numpy, written as `ve.safetensors` / `s3gen.safetensors` (the English release's formats), converted
with our converter, and each clip goes file -> Voice. Tolerances: cloning_harness.TOLERANCES
(tokens identical, embeddings cosine >= 0.9999, mels within 2e-4..5e-4, resamplers within 2e-6).
"""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.cloning import convert_cloning
from nightingale_mlx import quant
from tests.reference import cloning_harness
from tests.reference.weights import digest, random_state_dict


@pytest.fixture(scope="module")
def fixture_and_models(tmp_path_factory, fixtures_dir):
    fx = dict(np.load(fixtures_dir / "cloning_tiny_mtl-v2.npz"))
    spec, seed = json.loads(str(fx["spec"])), int(fx["seed"])
    ve, s3gen = random_state_dict(spec["ve"], seed), random_state_dict(spec["s3gen"], seed)
    assert digest(ve) == str(fx["digest_ve"]), "rebuilt voice encoder differs from the reference's"
    assert digest(s3gen) == str(fx["digest_s3gen_subset"]), "rebuilt S3Gen cloning tensors differ"
    ckpt = tmp_path_factory.mktemp("ckpt-cloning")
    save_file(ve, str(ckpt / "ve.safetensors"))
    save_file(s3gen, str(ckpt / "s3gen.safetensors"))
    models, _ = convert_cloning(ckpt, "en", quant.Recipe.parse("fp32"))
    return fx, models


@pytest.mark.parametrize("clip", range(len(cloning_harness.CLIPS)))
def test_cloning_matches_reference(fixture_and_models, fixtures_dir, clip):
    fx, models = fixture_and_models
    name = cloning_harness.CLIPS[clip]
    ref = {k.split("/", 1)[1]: v for k, v in fx.items() if k.startswith(f"{clip}/")}
    ours = cloning_harness.run_ours(models, fixtures_dir / "audio" / name, ref)
    checks = cloning_harness.compare(ref, ours, f"cloning.tiny.{name}")
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)
    if clip == 0:
        assert ref["prompt_tokens"].shape[1] == 150, "the long clip must exercise the 6 s T3 crop"
    else:
        assert ref["gen_prompt_feat"].shape[1] % 2 == 1, "the odd clip must give an odd mel length"
        assert any(c["name"].endswith("resample_sinc_24k_16k") for c in checks)
