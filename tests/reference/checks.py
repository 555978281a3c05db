"""The one comparison every parity harness reports: a JSON-able check dict.

Keys: name, max_abs_err, max_rel_err (max abs error / max |reference|), tolerance (on the
absolute error), ok, plus any extra figures.
"""

import numpy as np

from nightingale_mlx.quality import snr_db  # noqa: F401  (re-exported for the harnesses)


def error_check(name: str, ref, ours, tol: float, **extra) -> dict:
    ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    if ref.shape != ours.shape:
        return {"name": name, "max_abs_err": None, "max_rel_err": None, "tolerance": tol, "ok": False,
                "detail": f"shape {ours.shape} vs reference {ref.shape}", **extra}
    err = float(np.abs(ref - ours).max()) if ref.size else 0.0
    rel = err / max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-30)
    return {"name": name, "max_abs_err": err, "max_rel_err": rel, "tolerance": tol, "ok": err <= tol, **extra}
