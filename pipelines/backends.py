"""The backend registry: one entry a data format, each class owning its format (see `loader.Backend`).

Importing it is cheap (no torch, FFCV or DALI: those load when a loader is built), so the converter and
`meta` read `SUFFIXES` from here too. Adding a backend is one module plus one line below.
"""

from __future__ import annotations

from .dali_backend import DaliBackend
from .ffcv_backend import FfcvBackend

BACKENDS = {"ffcv": FfcvBackend, "dali": DaliBackend}
SUFFIXES = {name: backend.suffix for name, backend in BACKENDS.items()}  # what each reads for a split stem
