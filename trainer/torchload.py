"""Why `torch.load` refused a file, in one line: its errors run to many lines, and under `weights_only` the
first is a generic notice, the cause (the unpickler's complaint) being further down.

Shared by the readers of checkpoints and of `model.pretrained` weights, whose errors name the file and the
key and must fit one line (a user meets them as `launch.py: ...`).
"""

from __future__ import annotations


def load_reason(exc: BaseException) -> str:
    """`exc` from `torch.load` as one line: the weights-only unpickler's complaint, or the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        cause = next(
            (lines[k + 1] for k, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line), ""
        )
        return f"the weights-only unpickler refuses it ({cause or 'objects other than tensors'})"
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
