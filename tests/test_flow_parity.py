"""S3Gen flow parity against golden fixtures from chatterbox-tts 0.1.7 (tiny size, no torch needed).

Each fixture holds the inputs (tokens, prompt, x-vector, CFM noise) of an even and an odd prompt
mel length, the reference's mu / Euler steps / mel, and the flow's key list and seed. The weights
are rebuilt in numpy, written in the variant's original format (s3gen.pt or s3gen.safetensors),
converted with our converter code and run; tolerances are flow_harness.TOLERANCES["tiny"].
"""

import json

import numpy as np
import pytest

from tests.reference import flow_harness
from tests.reference.weights import digest, random_state_dict

VARIANTS = ["mtl-v2", "en"]


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request, tmp_path_factory, fixtures_dir):
    variant = request.param
    fx = dict(np.load(fixtures_dir / f"flow_tiny_{variant}.npz"))
    state = random_state_dict(json.loads(str(fx["spec"])), int(fx["seed"]))
    assert digest(state) == str(fx["digest"]), "rebuilt weights differ from the ones the reference ran"
    path = flow_harness.write_s3gen(state, tmp_path_factory.mktemp(f"ckpt-{variant}"), str(fx["s3gen_file"]))
    return variant, fx, flow_harness.convert_flow(path)


@pytest.mark.parametrize("scenario", ["even", "odd"])
def test_flow_matches_reference(converted, scenario):
    variant, fx, model = converted
    inputs = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"in/{scenario}/")}
    ref = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"ref/{scenario}/")}
    ours = flow_harness.run_ours(model, inputs)
    checks = flow_harness.compare(ref, ours, "tiny", f"flow.{variant}.{scenario}")
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)
    n, tm = inputs["tokens"].shape[1], inputs["prompt_feat"].shape[1]
    assert ours["mel"].shape == (1, 2 * n - tm % 2, 80)  # an odd prompt mel length gives 2N - 1 frames


@pytest.mark.slow
def test_full_size_s3gen_pt_maps_every_flow_tensor(tmp_path):
    """A full-size random s3gen.pt from the reference: every flow.* tensor is mapped, none missing."""
    import subprocess
    from pathlib import Path

    from mlx.utils import tree_flatten

    from convert.checkpoint import read_checkpoint
    from convert.sanitize.flow import UNUSED_FLOW, flow_dims, sanitize_flow
    from nightingale_mlx.config import FlowConfig
    from tests.reference.parity import ref_python

    script = Path(__file__).parent / "reference" / "make_checkpoint.py"
    subprocess.run([ref_python(), str(script), "--size", "full", "--variant", "mtl-v2", "--seed", "0",
                    "--out", str(tmp_path), "--only", "s3gen"], check=True, capture_output=True)
    weights = read_checkpoint(tmp_path / "s3gen.pt")
    flow_keys = {k[len("flow."):] for k in weights if k.startswith("flow.")}
    assert FlowConfig.from_dict(flow_dims(weights)) == FlowConfig()  # the real sizes, read by name
    assert set(sanitize_flow(weights)) == flow_keys - set(UNUSED_FLOW)
    model = flow_harness.convert_flow(tmp_path / "s3gen.pt")  # strict: nothing missing or extra
    assert len(flow_keys) == len(tree_flatten(model.parameters()))


@pytest.mark.reference
@pytest.mark.parametrize("size", ["tiny", "full"])
def test_live_flow_parity(size):
    import subprocess
    import sys

    variants = ["--variant", "mtl-v2", "--variant", "en"] if size == "tiny" else ["--variant", "mtl-v2"]
    run = subprocess.run([sys.executable, "-m", "tests.reference.parity", "--component", "flow", "--size", size,
                          *variants], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
