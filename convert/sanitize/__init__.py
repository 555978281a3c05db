"""Name and layout mapping from the reference's state dicts to ours, one module per component.

Our module attributes carry the reference's names, so mapping is mostly dropping what inference
never uses and fixing conv layouts. Layouts are known by name, never guessed from shapes (DESIGN §4).
"""

from .common import ConversionError  # noqa: F401
from .t3 import UNUSED_T3, sanitize_t3, t3_dims  # noqa: F401
