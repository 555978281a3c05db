"""Writes a random-weight Chatterbox checkpoint in the original file names and formats.

Runs under the reference env's Python (it needs torch to write `.pt` files):
    $NIGHTINGALE_REF_PYTHON tests/reference/make_checkpoint.py --size tiny --variant mtl-v2 --seed 0 --out DIR

Weights come from `weights.py` (numpy, keyed by seed and tensor name), so CI can rebuild the
same tensors without torch. The key lists come from instantiating the (size-patched) reference.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import patches  # noqa: E402
from weights import digest, random_state_dict  # noqa: E402

T3_FILES = {
    "en": "t3_cfg.safetensors",
    "mtl-v2": "t3_mtl23ls_v2.safetensors",
    "mtl-v3": "t3_mtl23ls_v3.safetensors",
}


def torch_spec(module):
    """[(name, shape, numpy dtype name)] of a module's state dict, in its own order."""
    return [
        (k, tuple(v.shape), str(v.numpy().dtype) if v.dtype.is_floating_point is False else "float32")
        for k, v in module.state_dict().items()
    ]


def load_numpy_state(module, state):
    import torch

    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)


def build_t3(variant: str):
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config

    hp = T3Config.english_only() if variant == "en" else T3Config.multilingual()
    return T3(hp).eval()


def write_t3(variant: str, seed: int, out: Path) -> dict:
    from safetensors.torch import save_file
    import torch

    t3 = build_t3(variant)
    spec = torch_spec(t3)
    state = random_state_dict(spec, seed)
    load_numpy_state(t3, state)  # proves the spec is exactly what the reference loads strictly
    save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(out / T3_FILES[variant]))
    return {"file": T3_FILES[variant], "spec": [list(s[:2]) + [s[2]] for s in spec], "digest": digest(state)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--variant", choices=sorted(T3_FILES), default="mtl-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default="all", help="comma list of parts to write (t3, ...); default all")
    args = p.parse_args(argv)

    patches.apply_sizes(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"t3": write_t3}
    wanted = list(parts) if args.only == "all" else args.only.split(",")
    manifest = {"size": args.size, "variant": args.variant, "seed": args.seed, "files": {}}
    for name in wanted:
        manifest["files"][name] = parts[name](args.variant, args.seed, args.out)
    (args.out / "test_manifest.json").write_text(json.dumps(manifest))
    print(json.dumps({k: v["file"] for k, v in manifest["files"].items()}))


if __name__ == "__main__":
    main()
