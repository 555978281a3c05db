"""`nightingale batch`: many items (a JSONL dataset, or a book's chapters) to audio files and a manifest.

inputs.py reads the job, longform.py speaks one item piece by piece, manifest.py keeps the record
that makes a rerun resume, runner.py drives the job in this process or on Ray (ray_backend.py).
"""

from .inputs import Item, InputError, read_items  # noqa: F401
from .longform import plan_pieces, piece_seed  # noqa: F401
