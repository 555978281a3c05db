"""The harness's seeded random weights: `nightingale_mlx/random_weights.py`, loaded by file path.

Loading by path keeps the package's __init__ (which imports mlx) out of the reference env.
"""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "nightingale_mlx" / "random_weights.py"
_spec = importlib.util.spec_from_file_location("nightingale_random_weights", _PATH)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

random_tensor = _module.random_tensor
random_state_dict = _module.random_state_dict
digest = _module.digest
random_conds = _module.random_conds
conds_digest = _module.conds_digest
