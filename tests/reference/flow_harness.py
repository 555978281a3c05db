"""Our side of the S3Gen flow parity checks (project env, no torch): inputs, conversion, our run,
the comparison. Shared by `parity.py` (live reference) and tests/test_flow_parity.py (fixtures).
"""

import json
import struct
import time
import zipfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from convert.checkpoint import read_checkpoint
from convert.sanitize.flow import flow_dims, sanitize_flow
from nightingale_mlx.config import FlowConfig
from nightingale_mlx.model_io import _load_strict
from nightingale_mlx.models.cfm import cosine_t_span
from nightingale_mlx.models.flow import CausalMaskedDiffWithXvec
from .checks import error_check as _err

# fp32 max-abs tolerances; mu, x and the mel are O(1-10). Measured at seed 0 with OpenBLAS: tiny
# <= 7.2e-6, full <= 6.1e-6 (errors grow ~linearly over the 10 CFG Euler steps). The margin
# covers other BLAS builds' summation orders.
TOLERANCES = {
    "tiny": {"mu": 2e-5, "steps": 1e-4, "mel": 1e-4, "t": 1e-6},
    "full": {"mu": 5e-5, "steps": 1e-4, "mel": 1e-4, "t": 1e-6},
}
# (name, prompt tokens Np, prompt mel frames Tm, generated tokens N): an even Tm = 2 Np and an odd
# Tm = 2 Np + 1 (the reference then yields 2N - 1 frames, spec §5.5).
SCENARIOS = {
    "tiny": [("even", 12, 24, 20), ("odd", 12, 25, 20)],
    "full": [("even", 40, 80, 50), ("odd", 40, 81, 50)],
}
N_TIMESTEPS = 10


def make_inputs(size: str, seed: int) -> dict:
    """Scenario inputs keyed `<scenario>/<field>`, channels-last; noise covers prompt + generated."""
    out = {}
    for i, (name, n_prompt, tm, n) in enumerate(SCENARIOS[size]):
        rng = np.random.default_rng([seed, 11, i])
        frames = 2 * (n_prompt + n)
        feat = np.clip(-6.0 + 2.0 * rng.standard_normal((1, tm, 80)), np.log(1e-5), 3.0)
        out.update({
            f"{name}/tokens": rng.integers(0, 6561, (1, n)).astype(np.int64),
            f"{name}/prompt_tokens": rng.integers(0, 6561, (1, n_prompt)).astype(np.int64),
            f"{name}/prompt_feat": feat.astype(np.float32),
            f"{name}/embedding": rng.standard_normal((1, 192)).astype(np.float32),
            f"{name}/noise": rng.standard_normal((1, frames, 80)).astype(np.float32),
        })
    return out


def scenarios(data: dict) -> dict:
    """`<scenario>/<field>` -> {scenario: {field: value}}."""
    out = {}
    for k, v in data.items():
        name, field = k.split("/", 1)
        out.setdefault(name, {})[field] = v
    return out


def convert_flow(s3gen_file: Path) -> CausalMaskedDiffWithXvec:
    """An original s3gen.pt / s3gen.safetensors -> our flow module, through our converter code."""
    weights = read_checkpoint(s3gen_file)
    model = CausalMaskedDiffWithXvec(FlowConfig.from_dict(flow_dims(weights)))
    _load_strict(model, {k: mx.array(v) for k, v in sanitize_flow(weights).items()}, s3gen_file)
    mx.eval(model.parameters())
    return model


def run_ours(model: CausalMaskedDiffWithXvec, inputs: dict) -> dict:
    a = {k: mx.array(v) for k, v in inputs.items()}
    start = time.perf_counter()
    traj = list(model.trajectory(a["tokens"], a["prompt_tokens"], a["prompt_feat"], a["embedding"],
                                 N_TIMESTEPS, noise=a["noise"]))
    mx.eval(traj)
    seconds = time.perf_counter() - start
    mu, steps = traj[0], traj[1:]
    return {
        "mu": np.array(mu),
        "steps": np.stack([np.array(x[0]) for x in steps]),
        "mel": np.array(steps[-1][:, inputs["prompt_feat"].shape[1]:]),
        "t": np.array(cosine_t_span(N_TIMESTEPS)[:-1]),
        "seconds": seconds,
    }


# Against the float64 reference: ours within this ratio of the reference's own fp32 error (or a
# 4-ulp floor), as T3 (t3_harness.exact_check): two fp32 summation orders, either can be larger.
EXACT_RATIO = 2.0


def compare(ref: dict, ours: dict, size: str, prefix: str, exact: dict = None) -> list:
    """mu, the t schedule, every Euler step's x (all frames) and the output mel; with `exact` (the
    float64 reference), mu, the steps and the mel against it too."""
    tol = TOLERANCES[size]
    checks = [_err(f"{prefix}.mu", ref["mu"], ours["mu"], tol["mu"]),
              _err(f"{prefix}.t_schedule", ref["t"], ours["t"], tol["t"])]
    per_step = [float(np.abs(r.astype(np.float64) - o).max()) if r.shape == o.shape else None
                for r, o in zip(ref["steps"], ours["steps"])]
    checks.append(_err(f"{prefix}.euler_steps", ref["steps"], ours["steps"], tol["steps"], per_step=per_step))
    checks.append(_err(f"{prefix}.mel", ref["mel"], ours["mel"], tol["mel"], frames=int(ref["mel"].shape[1])))
    if exact is not None:
        from .t3_harness import exact_check

        for key in ("mu", "steps", "mel"):
            checks.append(exact_check(f"{prefix}.{key}_vs_float64", exact[key], ref[key], ours[key], EXACT_RATIO))
    return checks


# ------------------------------------------------------------------ writing original-format files


def _pickle_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _pickle_ints(items) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", i) for i in items) + b"t"


def write_torch_pt(state: dict, path: Path) -> Path:
    """torch.save of a {name: float32 array} dict, without torch: the zip + pickle layout that
    torch.save writes (one storage per tensor), which convert.checkpoint.read_pt reads."""
    glob = lambda m, n: b"c" + f"{m}\n{n}\n".encode()  # noqa: E731
    body, storages = b"", {}
    for i, (name, a) in enumerate(state.items()):
        a = np.ascontiguousarray(a, dtype=np.float32)
        key = str(i)
        storages[key] = a.tobytes()
        strides = [int(s // 4) for s in a.strides] if a.ndim else []
        pid = (b"(" + _pickle_str("storage") + glob("torch", "FloatStorage") + _pickle_str(key)
               + _pickle_str("cpu") + b"J" + struct.pack("<i", a.size) + b"t")
        tensor = (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q" + b"J" + struct.pack("<i", 0)
                  + _pickle_ints(a.shape) + _pickle_ints(strides) + b"\x89"
                  + glob("collections", "OrderedDict") + b")R" + b"tR")
        body += _pickle_str(name) + tensor
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}(" + body + b"u.")
        z.writestr("archive/byteorder", b"little")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return path


def write_s3gen(state: dict, directory: Path, file_name: str) -> Path:
    """The state in the original S3Gen file format its name asks for (.pt or .safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(state, str(path))
        return path
    return write_torch_pt(state, path)


# ------------------------------------------------------------------ the live-reference driver


def flow_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    """parity.py component: checkpoint (ref env) -> reference run -> our conversion + run -> checks."""
    from . import parity
    from .weights import digest, random_state_dict

    ckpt = work / "ckpt"
    parity.run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt,
                   "--only", "s3gen")
    manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]["s3gen"]
    inputs = make_inputs(size, seed)
    np.savez(work / "in.npz", **inputs)
    parity.run_ref("ref_flow.py", "--ckpt", ckpt, "--size", size, "--inputs", work / "in.npz",
                   "--out", work / "ref.npz", "--n-timesteps", N_TIMESTEPS)
    ref = scenarios(dict(np.load(work / "ref.npz")))
    parity.run_ref("ref_flow.py", "--ckpt", ckpt, "--size", size, "--inputs", work / "in.npz",
                   "--out", work / "ref64.npz", "--n-timesteps", N_TIMESTEPS, "--dtype", "float64")
    exact = scenarios(dict(np.load(work / "ref64.npz")))
    spec = [s for s in manifest["spec"] if s[0].startswith("flow.")]
    state = random_state_dict(spec, seed)
    written = {k: v for k, v in read_checkpoint(ckpt / manifest["file"]).items() if k.startswith("flow.")}
    assert digest(written) == digest(state), "the checkpoint's flow tensors are not weights.py's"
    model = convert_flow(ckpt / manifest["file"])

    checks = []
    for name, ins in scenarios(inputs).items():
        ours = run_ours(model, ins)
        new = compare(ref[name], ours, size, f"flow.{variant}.{name}", exact=exact[name])
        next(c for c in new if c["name"].endswith(".mel"))["seconds"] = {
            "reference": float(ref[name]["seconds"]), "ours": ours["seconds"]}
        checks += new
    if write_fixtures:
        fixture = {f"in/{k}": v for k, v in inputs.items()}
        fixture.update({f"ref/{n}/{k}": v for n, r in ref.items() for k, v in r.items() if k != "seconds"})
        fixture["spec"] = np.array(json.dumps(spec))
        fixture["digest"] = np.array(digest(state))
        fixture["seed"] = np.array(seed)
        fixture["s3gen_file"] = np.array(manifest["file"])
        parity.FIXTURES.mkdir(exist_ok=True)
        np.savez_compressed(parity.FIXTURES / f"flow_{size}_{variant}.npz", **fixture)
    return checks
