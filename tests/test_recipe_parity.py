"""The shipped recipes against the fp32 reference fixtures: q8 and q4 through whichever kernels run
(CI runs this file with the CPU fast paths and again with NIGHTINGALE_MLX_NATIVE=1, the Metal
branches). Tolerances and their derivation: tests/reference/recipe_harness.py.
"""

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.cloning import convert_cloning
from convert.convert import convert
from nightingale_mlx import quant
from tests.reference import cloning_harness, flow_harness, hift_harness, t3_harness
from tests.reference import recipe_harness as rh
from tests.reference.sizes import t3_overrides
from tests.reference.weights import random_state_dict

T3_FILES = {"en": "t3_cfg.safetensors", "mtl-v2": "t3_mtl23ls_v2.safetensors"}


def _fixture(fixtures_dir, name):
    fx = dict(np.load(fixtures_dir / name))
    return fx, random_state_dict(json.loads(str(fx["spec"])), int(fx["seed"]))


def _assert_ok(checks):
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed)


@pytest.mark.parametrize("recipe", ["q8", "q4"])
@pytest.mark.parametrize("variant", ["en", "mtl-v2"])
def test_t3_recipe_teacher_forced(variant, recipe, fixtures_dir, tmp_path):
    fx, state = _fixture(fixtures_dir, f"t3_tiny_{variant}.npz")
    save_file(state, str(tmp_path / T3_FILES[variant]))
    model_dir = convert(tmp_path, tmp_path / "model", variant=variant, quantize=recipe,
                        t3_overrides=t3_overrides("tiny"), components=["t3"])
    inputs = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith("teacher/in/")}
    ref = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith("teacher/ref/")}
    ours = t3_harness.run_ours(model_dir, inputs, alignment_analyzer=variant != "en")
    _assert_ok(rh.t3_checks(ref, ours, inputs, "tiny", recipe, f"{recipe}.t3.{variant}"))


@pytest.mark.parametrize("scenario", ["even", "odd"])
def test_flow_q8(scenario, fixtures_dir, tmp_path):
    fx, state = _fixture(fixtures_dir, "flow_tiny_mtl-v2.npz")
    model = flow_harness.convert_flow(flow_harness.write_s3gen(state, tmp_path, str(fx["s3gen_file"])))
    rh.quantize_s3gen_part(model, "flow", "q8")
    inputs = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"in/{scenario}/")}
    ref = {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith(f"ref/{scenario}/")}
    _assert_ok(rh.flow_checks(ref, flow_harness.run_ours(model, inputs), f"q8.flow.{scenario}"))


@pytest.mark.parametrize("recipe", ["q8", "fp16"])  # q8/q4 keep HiFT fp32; fp16 (and hift=16) make it fp16
def test_hift_recipe(recipe, fixtures_dir, tmp_path):
    fx, state = _fixture(fixtures_dir, "hift_tiny_mtl-v2.npz")
    save_file(state, str(tmp_path / "s3gen.safetensors"))
    hift = hift_harness.load_hift(tmp_path / "s3gen.safetensors")
    rh.quantize_s3gen_part(hift, "hift", recipe)
    assert hift.conv_post.weight.dtype == (mx.float16 if recipe == "fp16" else mx.float32)
    ours = hift_harness.run_ours(hift, hift_harness.make_inputs(int(fx["seed"])), ref=fx)
    _assert_ok(rh.hift_checks(fx, ours, f"{recipe}.hift"))


def test_cloning_fp16(fixtures_dir, tmp_path):
    fx = dict(np.load(fixtures_dir / "cloning_tiny_mtl-v2.npz"))
    spec, seed = json.loads(str(fx["spec"])), int(fx["seed"])
    save_file(random_state_dict(spec["ve"], seed), str(tmp_path / "ve.safetensors"))
    save_file(random_state_dict(spec["s3gen"], seed), str(tmp_path / "s3gen.safetensors"))
    models, _ = convert_cloning(tmp_path, "en", quant.Recipe.parse("q8"))
    assert models.ve.proj.weight.dtype == mx.float16
    for clip, name in enumerate(cloning_harness.CLIPS):
        ref = {k.split("/", 1)[1]: v for k, v in fx.items() if k.startswith(f"{clip}/")}
        _assert_ok(rh.cloning_checks(ref, cloning_harness.run_ours(models, fixtures_dir / "audio" / name, ref),
                                     f"q8.cloning.{name}"))
