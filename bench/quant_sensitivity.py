"""How the group-wise quantization error depends on the weight distribution.

    python -m bench.quant_sensitivity [--json] [--dim 1024]

The quality report runs on random Gaussian weights, a proxy: trained weights are heavy-tailed and
have outlier channels. This measures the relative output error |x W_q - x W| / |x W| of one linear
layer (MLX affine quantization, as the recipes use it) for
- gaussian: N(0, 1/dim), like the random checkpoints;
- student-t3: Student-t with 3 degrees of freedom (heavy tails everywhere);
- outlier-in: Gaussian with 1% of the input channels scaled x20 (every group that holds one
  stretches its range: the usual LLM outlier pattern);
- outlier-out: Gaussian with 1% of the output channels scaled x20 (each group keeps its own scale);
- sparse-spikes: Gaussian plus 0.1% of the entries scaled x50.
"""

import argparse
import json

import mlx.core as mx
import numpy as np

BITS = (8, 4)
GROUPS = (32, 64, 128)


def weights(kind: str, dim: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    if kind == "student-t3":
        w = rng.standard_t(3, (dim, dim)) / np.sqrt(3 * dim)  # t3 has variance 3
    elif kind == "outlier-in":
        w[:, rng.choice(dim, dim // 100, replace=False)] *= 20
    elif kind == "outlier-out":
        w[rng.choice(dim, dim // 100, replace=False)] *= 20
    elif kind == "sparse-spikes":
        idx = rng.choice(dim * dim, dim * dim // 1000, replace=False)
        w.flat[idx] *= 50
    return w.astype(np.float32)


KINDS = ("gaussian", "student-t3", "outlier-in", "outlier-out", "sparse-spikes")


def output_error(w: np.ndarray, x: mx.array, bits: int, group: int) -> float:
    wm = mx.array(w)
    wq = mx.dequantize(*mx.quantize(wm, group_size=group, bits=bits), group_size=group, bits=bits)
    ref = x @ wm.T
    return float(mx.linalg.norm(x @ wq.T - ref) / mx.linalg.norm(ref))


def run(dim: int = 1024, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = mx.array(rng.standard_normal((64, dim)).astype(np.float32))
    rows = []
    for kind in KINDS:
        w = weights(kind, dim, rng)
        for bits in BITS:
            for group in GROUPS:
                rows.append({"weights": kind, "bits": bits, "group": group, "rel_err": output_error(w, x, bits, group)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = run(args.dim)
    print("| weights | " + " | ".join(f"q{b} g{g}" for b in BITS for g in GROUPS) + " |")
    print("|---|" + "---|" * (len(BITS) * len(GROUPS)))
    for kind in KINDS:
        cells = [f"{100 * r['rel_err']:.2f}%" for r in rows if r["weights"] == kind]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
