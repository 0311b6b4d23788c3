"""Offline conversion of long-tailed image datasets into FFCV `.beton` files and DALI WebDataset shards.

    from pipelines.convert import ConvertOptions, SplitRequest, convert
    summary = convert(SplitRequest("imagenet_lt", root, split_file=...), out_dir, ConvertOptions(workers=8))

The CLI is `tools/convert_datasets.py`; the output files and the meta schema are in `pipelines/meta.py`.
"""

from .options import ConvertOptions
from .outputs import KeptOutputMismatch
from .readers import READERS, read_split, register
from .run import ConversionError, WriteError, convert, convert_samples, summary_line, write_order
from .samples import SampleList, SplitError, SplitRequest, SplitWarning
from .staging import OutputError, OutputExistsError

__all__ = [
    "READERS",
    "ConversionError",
    "ConvertOptions",
    "KeptOutputMismatch",
    "OutputError",
    "OutputExistsError",
    "SampleList",
    "SplitError",
    "SplitRequest",
    "SplitWarning",
    "WriteError",
    "convert",
    "convert_samples",
    "read_split",
    "register",
    "summary_line",
    "write_order",
]
