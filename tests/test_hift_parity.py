"""HiFT parity against golden fixtures from chatterbox-tts 0.1.7 (tiny size, no torch needed).

Each fixture holds the reference's outputs plus the mel2wav key spec, seed and digests; weights
and inputs (mels, SineGen phases and noise, the injected F0 track) are rebuilt here in numpy. The
weights are written as an original `s3gen.safetensors` (the `mel2wav.` names, weight norm
unfolded) and go through our converter's mapping, so file -> sanitize -> load -> vocode is tested.
Tolerances are `hift_harness.TOLERANCES["tiny"]`; the 4 s voiced waveform must reach 30 dB SNR.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.reference import hift_harness
from tests.reference.weights import digest, random_state_dict

VARIANTS = ["mtl-v2", "en"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_hift_matches_reference(variant, fixtures_dir, tmp_path):
    fx = dict(np.load(fixtures_dir / f"hift_tiny_{variant}.npz"))
    state = random_state_dict(json.loads(str(fx["spec"])), int(fx["seed"]))
    assert digest(state) == str(fx["digest"]), "rebuilt weights differ from the ones the reference ran"
    inputs = hift_harness.make_inputs(int(fx["seed"]))
    assert hift_harness.inputs_digest(inputs) == str(fx["inputs_digest"]), "rebuilt inputs differ"
    save_file(state, str(tmp_path / "s3gen.safetensors"))

    hift = hift_harness.load_hift(tmp_path / "s3gen.safetensors")
    ours = hift_harness.run_ours(hift, inputs, ref=fx)
    checks = hift_harness.compare(fx, ours, "tiny", f"hift.tiny.{variant}")
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)
    names = {c["name"].rsplit(".", 2)[-2] + "." + c["name"].rsplit(".", 1)[-1] for c in checks}
    assert {"predicted.decode_reference_source", "voiced.wav", "voiced.f0"} <= names
