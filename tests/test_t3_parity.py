"""T3 parity against golden fixtures from chatterbox-tts 0.1.7 (tiny size, no torch needed).

The fixture holds the reference's inputs and outputs plus the checkpoint's key list and seed; the
weights are rebuilt here in numpy, written in the original safetensors format, and converted with
our converter, so the whole path (file -> convert -> load -> generate) is under test.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.convert import convert
from tests.reference import t3_harness
from tests.reference.sizes import t3_overrides
from tests.reference.weights import digest, random_state_dict

VARIANTS = ["mtl-v2", "en"]
T3_FILES = {"en": "t3_cfg.safetensors", "mtl-v2": "t3_mtl23ls_v2.safetensors"}


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request, tmp_path_factory, fixtures_dir):
    variant = request.param
    fx = dict(np.load(fixtures_dir / f"t3_tiny_{variant}.npz"))
    spec = json.loads(str(fx["spec"]))
    state = random_state_dict(spec, int(fx["seed"]))
    assert digest(state) == str(fx["digest"]), "rebuilt weights differ from the ones the reference ran"
    ckpt = tmp_path_factory.mktemp(f"ckpt-{variant}")
    save_file(state, str(ckpt / T3_FILES[variant]))
    model_dir = convert(ckpt, tmp_path_factory.mktemp("model") / variant, variant=variant,
                        t3_overrides=t3_overrides("tiny"), components=["t3"])
    return variant, fx, model_dir


@pytest.mark.parametrize("mode", ["teacher", "greedy", "sample"])
def test_t3_matches_reference(converted, mode):
    variant, fx, model_dir = converted
    inputs = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"{mode}/in/")}
    ref = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"{mode}/ref/")}
    # Greedy/sample follow the reference's tokens; each step where our own choice differs must be
    # a boundary case (t3_harness.token_choice_check).
    ours = t3_harness.run_ours(model_dir, inputs, alignment_analyzer=variant != "en", follow=ref["tokens"])
    params = json.loads(str(inputs["params"]))
    checks = t3_harness.compare(ref, ours, "tiny", f"t3.{variant}.{mode}", params["min_p"], top_p=params["top_p"])
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)
    if mode == "greedy":
        assert len(ref["tokens"]) >= 50
