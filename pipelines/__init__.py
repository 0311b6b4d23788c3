"""Data in: offline conversion, FFCV and DALI loaders behind one factory, samplers, batched augmentations.

from pipelines import make_loader, read_meta
"""

from .factory import BACKENDS, make_loader
from .loader import Loader
from .meta import DatasetMeta, MetaError, read_meta
from .samplers import SAMPLERS, make_sampler
from .shards import ShardError

__all__ = [
    "BACKENDS",
    "SAMPLERS",
    "DatasetMeta",
    "Loader",
    "MetaError",
    "ShardError",
    "make_loader",
    "make_sampler",
    "read_meta",
]
