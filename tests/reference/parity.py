"""Parity of nightingale_mlx against the live reference (chatterbox-tts 0.1.7, its own env).

    python -m tests.reference.parity --component t3 --size tiny --seed 0 [--variant mtl-v2] [--write-fixtures]
    python -m tests.reference.parity --component all --size full --seeds 5 [--summary out.json]

Writes a random checkpoint in the original formats (reference env), runs the reference on it,
converts it with our converter, runs ours on the same inputs and token choices, and prints one
JSON line per check (name, max_abs_err, max_rel_err, tolerance, ok, seed). Exits 1 on any failure.
`--seeds N` sweeps seeds --seed .. --seed + N - 1 (not hand-picked) and then prints, per check and
figure, its min / median / worst over the seeds (sweep.py).
The reference env is found through NIGHTINGALE_REF_PYTHON (default: what setup_env.sh made).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import flow_harness, sweep, t3_harness
from .sizes import t3_overrides

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
DEFAULT_REF_PYTHON = Path.home() / ".cache/nightingale/ref-env/bin/python"
# Fixtures keep the first steps' full logits/probs (they are 8194 wide) and every token.
FIXTURE_STEPS = 6


def ref_python() -> str:
    path = os.environ.get("NIGHTINGALE_REF_PYTHON", str(DEFAULT_REF_PYTHON))
    if not Path(path).exists():
        sys.exit(f"parity: no reference env at {path}; run tests/reference/setup_env.sh "
                 "or set NIGHTINGALE_REF_PYTHON")
    return path


def run_ref(script: str, *args) -> None:
    subprocess.run([ref_python(), str(HERE / script), *map(str, args)], check=True)


def t3_checks(size: str, variant: str, seed: int, work: Path, write_fixtures: bool) -> list:
    from convert.convert import convert

    ckpt, model_dir = work / "ckpt", work / "model"
    run_ref("make_checkpoint.py", "--size", size, "--variant", variant, "--seed", seed, "--out", ckpt, "--only", "t3")
    convert(ckpt, model_dir, variant=variant, t3_overrides=t3_overrides(size), force=True, components=["t3"])
    manifest = json.loads((ckpt / "test_manifest.json").read_text())["files"]["t3"]
    analyzer = t3_harness.family(variant) == "mtl"  # 0.1.7 runs it for every multilingual model

    checks, fixture = [], {}
    for mode, steps, params in t3_harness.SCENARIOS[t3_harness.family(variant)]:
        if T3_SCENARIOS and mode not in T3_SCENARIOS:
            continue
        inputs = t3_harness.make_inputs(variant, mode, steps, params, seed)
        np.savez(work / "in.npz", **inputs)
        run_ref("ref_t3.py", "--ckpt", ckpt, "--variant", variant, "--size", size,
                "--inputs", work / "in.npz", "--out", work / "ref.npz")
        ref = dict(np.load(work / "ref.npz"))
        # The float64 reference on the fp32 reference's tokens: the exact answer both are measured against.
        forced = np.concatenate([ref["tokens"], inputs["forced"]])[:steps]
        np.savez(work / "in64.npz", **{**inputs, "mode": np.array("teacher"), "forced": forced})
        run_ref("ref_t3.py", "--ckpt", ckpt, "--variant", variant, "--size", size, "--dtype", "float64",
                "--inputs", work / "in64.npz", "--out", work / "ref64.npz")
        exact = dict(np.load(work / "ref64.npz"))
        ours = t3_harness.run_ours(model_dir, inputs, analyzer, follow=ref["tokens"])
        checks += t3_harness.compare(ref, ours, size, f"t3.{variant}.{mode}", params["min_p"], exact=exact,
                                     top_p=params["top_p"])
        for k, v in ref.items():
            fixture[f"{mode}/ref/{k}"] = v[:FIXTURE_STEPS] if k in ("logits", "probs") else v
        for k, v in inputs.items():
            fixture[f"{mode}/in/{k}"] = v
    if write_fixtures:
        fixture["spec"] = np.array(json.dumps(manifest["spec"]))
        fixture["digest"] = np.array(manifest["digest"])
        fixture["seed"] = np.array(seed)
        FIXTURES.mkdir(exist_ok=True)
        np.savez_compressed(FIXTURES / f"t3_{size}_{variant}.npz", **fixture)
    return checks


# --t3-scenario: run only these T3 scenarios (a full-size T3 seed takes ~20 min for all three).
T3_SCENARIOS = []

# name -> fn(size, variant, seed, work_dir, write_fixtures) -> list of checks. Components that
# need several sub-harnesses (s3gen = flow + hift) list them in ALIASES.
COMPONENTS = {"t3": t3_checks}
ALIASES = {}
from . import cloning_harness  # noqa: E402
COMPONENTS["cloning"] = cloning_harness.cloning_checks
COMPONENTS["flow"] = flow_harness.flow_checks
ALIASES.setdefault("s3gen", []).append("flow")
from . import text_harness  # noqa: E402
COMPONENTS["text"] = text_harness.text_checks
from . import hift_harness  # noqa: E402
COMPONENTS["hift"] = hift_harness.hift_checks
ALIASES.setdefault("s3gen", []).append("hift")
from . import e2e_harness  # noqa: E402
COMPONENTS["e2e"] = e2e_harness.e2e_checks
from . import turbo_harness  # noqa: E402
COMPONENTS["turbo"] = turbo_harness.turbo_checks  # T3, e2e and voice of Turbo/Nano (--variant turbo|nano)
from . import vc_harness  # noqa: E402
COMPONENTS["vc"] = vc_harness.vc_checks  # voice conversion: standard decoder (en) and meanflow (turbo|nano)
# Variants run when --variant is not given (default: the multilingual and English families).
DEFAULT_VARIANTS = {"turbo": ["turbo", "nano"], "vc": list(vc_harness.VARIANTS)}


def main(argv=None):
    p = argparse.ArgumentParser(description="nightingale_mlx vs the PyTorch reference")
    p.add_argument("--component", default="t3", help="one of the components, s3gen (flow + hift) or all")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--variant", action="append", choices=["en", "mtl-v2", "mtl-v3", "turbo", "nano"])
    p.add_argument("--seed", type=int, default=0, help="the (first) seed")
    p.add_argument("--seeds", type=int, default=1, help="sweep this many consecutive seeds")
    p.add_argument("--summary", type=Path, help="also write the sweep's summary as JSON here")
    p.add_argument("--write-fixtures", action="store_true", help="also write tests/fixtures (tiny only)")
    p.add_argument("--t3-scenario", action="append", choices=["teacher", "greedy", "sample"],
                   help="only these T3 scenarios (default: all)")
    args = p.parse_args(argv)
    T3_SCENARIOS[:] = args.t3_scenario or []
    if args.write_fixtures and (args.size != "tiny" or T3_SCENARIOS):
        p.error("--write-fixtures is for --size tiny, all scenarios")

    names = list(COMPONENTS) if args.component == "all" else ALIASES.get(args.component, [args.component])
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        p.error(f"unknown component {args.component!r}; expected one of {', '.join([*COMPONENTS, *ALIASES])}")
    checks = []
    for seed in range(args.seed, args.seed + args.seeds):
        for name in names:
            for variant in args.variant or DEFAULT_VARIANTS.get(name, ["mtl-v2", "en"]):
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as work:
                    new = COMPONENTS[name](args.size, variant, seed, Path(work), args.write_fixtures)
                for c in new:
                    c["seed"] = seed
                    print(json.dumps(c), flush=True)  # as they come: a sweep runs for hours
                print(f"{name} {variant} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                checks += new
    if args.seeds > 1:
        summary = sweep.summarize(checks)
        for row in summary:
            print(json.dumps(row))
        if args.summary:
            args.summary.write_text(json.dumps(summary, indent=1))
    failed = [f"{c['name']}@{c['seed']}" for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed {failed}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
