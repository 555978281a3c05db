"""Layout helpers shared by the per-component mappings. Each is applied by tensor name, never by shape."""

from typing import Dict

import numpy as np


class ConversionError(ValueError):
    pass


def conv1d(w: np.ndarray) -> np.ndarray:
    """torch Conv1d (O, I, K) -> MLX (O, K, I)."""
    return np.ascontiguousarray(w.transpose(0, 2, 1))


def conv_transpose1d(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose1d (I, O, K) -> MLX (O, K, I)."""
    return np.ascontiguousarray(w.transpose(1, 2, 0))


def conv2d(w: np.ndarray) -> np.ndarray:
    """torch Conv2d (O, I, kh, kw) -> MLX (O, kh, kw, I)."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


def fold_weight_norm(weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Replaces weight-norm pairs by `<m>.weight = g * v / ||v||` (norm over all dims but 0).

    Handles torch's `parametrizations.weight.original0/1` (g, v) and the legacy `weight_g/weight_v`.
    """
    out = dict(weights)
    pairs = []
    for k in weights:
        if k.endswith(".parametrizations.weight.original0"):
            base = k[: -len(".parametrizations.weight.original0")]
            pairs.append((base, k, f"{base}.parametrizations.weight.original1"))
        elif k.endswith(".weight_g"):
            base = k[: -len(".weight_g")]
            pairs.append((base, k, f"{base}.weight_v"))
    for base, gk, vk in pairs:
        if vk not in weights:
            raise ConversionError(f"weight norm of {base}: {gk} without {vk}")
        g = weights[gk].astype(np.float64)
        v = weights[vk].astype(np.float64)
        norm = np.sqrt((v * v).reshape(v.shape[0], -1).sum(axis=1)).reshape((-1,) + (1,) * (v.ndim - 1))
        out[f"{base}.weight"] = (g * v / norm).astype(weights[vk].dtype)
        del out[gk], out[vk]
    return out


def take_prefix(weights: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """The tensors under `prefix.`, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
