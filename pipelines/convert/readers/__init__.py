"""Readers: one function per dataset name, `SplitRequest -> SampleList`, chosen from a registry.

Add a dataset by decorating a function with `@register("name")` in a module imported below.
"""

from __future__ import annotations

from collections.abc import Callable

from ..samples import SampleList, SplitError, SplitRequest

Reader = Callable[[SplitRequest], SampleList]
READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"reader {name!r} registered twice")
        READERS[name] = fn
        return fn

    return deco


def read_split(request: SplitRequest) -> SampleList:
    """Run the reader registered under `request.dataset`."""
    try:
        reader = READERS[request.dataset]
    except KeyError:
        raise SplitError(
            f"unknown dataset {request.dataset!r}; valid: {', '.join(sorted(READERS))}"
        ) from None
    return reader(request)


# Imported for their @register side effect.
from . import cifar, folder, inat, lists  # noqa: E402, F401
