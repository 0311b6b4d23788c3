"""Data in: offline conversion, FFCV and DALI loaders behind one factory, samplers, batched augmentations.

    from pipelines import make_loader, read_meta

Names are resolved lazily (PEP 562): the converter CLI and its worker processes import `pipelines.convert`
and `pipelines.meta` without paying for torch, FFCV and DALI, which only the loaders need.
"""

from importlib import import_module

_EXPORTS = {
    "DataConfig": ".config",
    "DataError": ".errors",
    "data_path": ".config",
    "BACKENDS": ".backends",
    "make_loader": ".factory",
    "Loader": ".loader",
    "DatasetMeta": ".meta",
    "MetaError": ".meta",
    "read_meta": ".meta",
    "SAMPLERS": ".samplers",
    "make_sampler": ".samplers",
    "ShardError": ".shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
