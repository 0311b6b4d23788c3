"""The torch APIs that moved inside the supported torch range (setup.cfg: torch>=2.11,<2.15), resolved once.

fastlt installs into an environment's own torch when it is in range, so code must not call an API under a
name only some versions have. Each such API is looked up here, on the running torch, when this module is
imported, and the rest of the code calls it by the name defined here (the newest spelling). Adding support
for another version means adding its spelling here, nowhere else. Invariant: this module imports only torch,
and every name it exports resolves on every torch in the range (a torch outside it fails at import with one
line naming the API), so callers never test versions themselves.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch.distributed import _functional_collectives as _fc

SUPPORTED = "torch>=2.11,<2.15"


def _first(module: ModuleType, *names: str) -> Any:
    """The first of `names` that `module` has (newest spelling first)."""
    for name in names:
        found = getattr(module, name, None)
        if found is not None:
            return found
    raise ImportError(
        f"fastlt supports {SUPPORTED}: torch {torch.__version__} has none of "
        f"{', '.join(f'{module.__name__}.{n}' for n in names)}"
    )


# Traceable all-gather along a dimension (dynamo compiles it into the graph): named `all_gather_tensor` and
# `all_gather_tensor_autograd` up to torch 2.11; 2.14 has both spellings, the old ones warning when eager.
all_gather_single = _first(_fc, "all_gather_single", "all_gather_tensor")
all_gather_single_autograd = _first(_fc, "all_gather_single_autograd", "all_gather_tensor_autograd")
wait_tensor = _fc.wait_tensor
