"""Which outputs of a stem a conversion writes, replaces and keeps, and the one meta file that describes them.

`--formats dali` on a stem that already has a `.beton` adds (or, with --overwrite, replaces) the shards and
keeps the `.beton`: converting ImageNet takes hours, and a format the user did not name is never deleted.
The meta file then lists both formats, so both must hold the same samples: a kept format is checked against
the new conversion, cheaply before any image is decoded (seed, source, resolution, quality, classes) and
exactly at the end (the digest of the written (path, label) sequence each format entry records). When they
differ the conversion is refused, naming the difference, rather than replacing the kept format: the user
says `--formats ffcv,dali --overwrite` to replace both, which costs one flag instead of hours.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import SUFFIXES
from ..meta import META_SUFFIX, DatasetMeta, MetaError, read_meta
from .staging import OutputError, OutputExistsError

FORMATS = tuple(SUFFIXES)  # the converter writes every backend's format (`run.py` wires each writer)
# Meta fields both formats share; `source` is left out (the same list given by another path is the same list).
EARLY = ("seed", "max_resolution", "jpeg_quality", "num_classes")
LATE = ("num_samples", "class_counts")


class KeptOutputMismatch(OutputError):
    """A format this conversion keeps holds other samples than the new one would: refused, nothing written."""


def output_names(stem: str) -> dict[str, str]:
    """What converting `stem` writes: each format's file or folder (the names the loaders read), the meta."""
    return {**{fmt: f"{stem}{suffix}" for fmt, suffix in SUFFIXES.items()}, "meta": f"{stem}{META_SUFFIX}"}


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


@dataclass
class OutputPlan:
    """What `out` holds for `stem` and what the conversion will do with it."""

    out: Path
    names: dict[str, str]
    write: list[str]  # names this conversion writes, the meta last
    replaced: list[Path] = field(default_factory=list)  # existing outputs the commit replaces
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> its entry in `old`
    old: DatasetMeta | None = None

    def kept_paths(self) -> list[Path]:
        return [self.out / self.names[f] for f in self.kept]

    def notice(self, stem: str) -> str | None:
        """One line saying what the commit replaces and keeps (None for a first conversion)."""
        replaced = [p for p in self.replaced if not (self.kept and p.name == self.names["meta"])]
        if replaced:
            msg = f"{stem}: replacing {', '.join(map(str, replaced))}"
        elif self.kept:
            msg = (
                f"{stem}: adding {', '.join(n for n in self.write if n != self.names['meta'])} to {self.out}"
            )
        else:
            return None
        if self.kept:
            msg += (
                f" (keeping {', '.join(self.names[f] for f in self.kept)}; {self.names['meta']} lists both)"
            )
        return msg


def plan_outputs(out: Path, stem: str, formats: tuple[str, ...], overwrite: bool) -> OutputPlan:
    names = output_names(stem)
    write = [names[f] for f in formats] + [names["meta"]]
    on_disk = [f for f in FORMATS if _exists(out / names[f])]
    meta_path = out / names["meta"]
    clash = [out / names[f] for f in formats if f in on_disk]
    others = [f for f in on_disk if f not in formats]
    if not others and _exists(meta_path):
        clash.append(meta_path)  # nothing to keep: the old meta is replaced, not updated
    if clash and not overwrite:
        raise OutputExistsError(
            f"{', '.join(map(str, clash))} already exist(s); pass --overwrite to replace "
            + ("them" if not others else f"them (keeping {', '.join(names[f] for f in others)})")
        )
    plan = OutputPlan(out, names, write, replaced=clash)
    if not others:
        return plan
    remedy = f"pass --formats {','.join(FORMATS)} --overwrite to replace both, or convert into another --out"
    try:
        plan.old = read_meta(meta_path)
    except MetaError as exc:
        raise KeptOutputMismatch(f"cannot keep {names[others[0]]}: {exc}; {remedy}") from None
    for f in others:
        if f not in plan.old.formats:
            raise KeptOutputMismatch(
                f"{out / names[f]} is not listed in {meta_path}, so nothing says which samples it holds; "
                f"{remedy}"
            )
        plan.kept[f] = dict(plan.old.formats[f])
    if _exists(meta_path):
        plan.replaced.append(meta_path)
    return plan


def _differences(old: DatasetMeta, new: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [
        f"{k} {getattr(old, k)!r} -> {new[k]!r}"
        for k in keys
        if k in new and _comparable(getattr(old, k)) != _comparable(new[k])
    ]


def _comparable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list | tuple) else v


def check_kept(plan: OutputPlan, new: dict[str, Any], digest: str | None = None) -> None:
    """Refuse when a kept format would hold other samples than the new conversion: `new` has the meta fields
    known so far (EARLY before decoding; LATE and the digest at the end)."""
    if plan.old is None:
        return
    diffs = _differences(plan.old, new, EARLY + LATE)
    for f, entry in plan.kept.items():
        if digest is not None and entry.get("samples_digest") not in (None, digest):
            diffs.append(f"the (path, label) sequence differs from {plan.names[f]}'s")
    if diffs:
        kept = ", ".join(map(str, plan.kept_paths()))
        raise KeptOutputMismatch(
            f"{kept} is kept, but this conversion differs from it ({'; '.join(diffs)}): one meta file cannot "
            f"describe both; pass --formats {','.join(FORMATS)} --overwrite to replace both, or convert "
            "into another --out; nothing was written"
        )


def merged_formats(plan: OutputPlan, written: dict[str, dict]) -> dict[str, dict]:
    """The meta's `formats`: the kept entries as they were, then the ones just written, in FORMATS order."""
    both = {**plan.kept, **written}
    return {f: both[f] for f in FORMATS if f in both}


class SampleDigest:
    """blake2b of the written (path, label) sequence: two formats hold the same samples iff equal."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def add(self, path: str, label: int) -> None:
        self._h.update(f"{path}\t{label}\n".encode())

    def hexdigest(self) -> str:
        return self._h.hexdigest()
