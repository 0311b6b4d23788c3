"""Convert a long-tailed image dataset once into FFCV `.beton` and DALI WebDataset shards (+ `.meta.json`).

    python tools/convert_datasets.py imagenet_lt --root /data/imagenet \\
        --split-file /data/ImageNet_LT/ImageNet_LT_train.txt --out data/imagenet_lt --workers 16
    python tools/convert_datasets.py cifar100_lt --root data/cifar --split train --imb-ratio 100 --out data/c

Writes <stem>.beton, <stem>.dali/ and <stem>.meta.json (stem: the split file's, else <dataset>_<split>) at
once at the end, so a failed run leaves --out untouched; a format not in --formats keeps its earlier output.
Exit: 0 done, 1 conversion or writing failed, 2 bad arguments, unusable --out, outputs without --overwrite.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipelines.convert import (  # noqa: E402
    READERS,
    ConversionError,
    ConvertOptions,
    OutputError,
    OutputExistsError,
    SplitError,
    SplitRequest,
    WriteError,
    convert,
    summary_line,
)
from pipelines.convert.progress import DEFAULT_INTERVAL  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(READERS), metavar="DATASET", help=" | ".join(sorted(READERS)))
    p.add_argument(
        "--root", type=Path, required=True, help="image root; paths in split files are relative to it"
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument("--split-file", type=Path, help="list (<path> <label> lines) or iNaturalist JSON")
    split.add_argument(
        "--split", help="split name (train/val/test): the dataset's conventional file under --root"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--formats", default="ffcv,dali", help="comma-separated subset of ffcv,dali (default both)"
    )
    p.add_argument(
        "--max-resolution", type=int, default=512, help="longest image side, 0 = keep (default 512)"
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)"
    )
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: all cores)")
    p.add_argument(
        "--imb-ratio", type=float, default=None, help="CIFAR-LT imbalance ratio n_max/n_min (default 100)"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="number of classes, when the highest label of a list is not the last class",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled write order (default 0)")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per DALI shard (default 10000)")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip missing/unreadable images, list them in the meta"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of the same stem")
    p.add_argument("--allow-empty-classes", action="store_true", help="convert even if a class has no image")
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="split-file paths may be absolute or leave --root with ../ (refused by default)",
    )
    p.add_argument(
        "--raw-max-pixels",
        type=int,
        default=64 * 64,
        help="images of at most this many pixels are stored losslessly: raw (FFCV), PNG (DALI); default 4096",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (or progress lines)")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help="seconds between progress lines when stderr is not a terminal, e.g. in a batch job's log "
        f"(default {DEFAULT_INTERVAL:.0f}; a terminal gets a progress bar)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the temporary outputs are removed.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    format_warning = warnings.formatwarning
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
        warnings.formatwarning = format_warning


def _run(args: argparse.Namespace) -> int:
    try:
        opts = ConvertOptions(
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
            max_resolution=args.max_resolution,
            jpeg_quality=args.jpeg_quality,
            workers=args.workers,
            seed=args.seed,
            shard_size=args.shard_size,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            allow_empty_classes=args.allow_empty_classes,
            raw_max_pixels=args.raw_max_pixels,
            progress=not args.no_progress,
            progress_interval=args.progress_interval,
        )
    except ValueError as exc:
        print(f"convert_datasets: {exc}", file=sys.stderr)
        return 2
    request = SplitRequest(
        args.dataset,
        args.root,
        args.split_file,
        args.split,
        args.imb_ratio,
        args.num_classes,
        allow_outside_root=args.allow_outside_root,
    )
    try:
        summary = convert(request, args.out, opts, notify=_say)
    except (OutputExistsError, OutputError) as exc:  # the message says what was left as it was
        _say(f"error: {exc}")
        return 2
    except WriteError as exc:
        _say(f"error: {exc}")
        return 1
    except (SplitError, ConversionError) as exc:
        _say(f"error: {exc}; nothing was written to {args.out}")
        return 1
    except OSError as exc:  # reading the source (a folder without permission, ...): still one line
        _say(f"error: {exc.strerror or exc}: {exc.filename}; nothing was written to {args.out}")
        return 1
    except KeyboardInterrupt:
        print(f"convert_datasets: interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    print(summary_line(summary), flush=True)
    return 0


def _say(line: str) -> None:
    print(f"convert_datasets: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
