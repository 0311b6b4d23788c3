"""Sweep post-hoc logit adjustment and tau-normalisation over a finished run's evaluation split.

    python -m tools.posthoc runs/NAME                          # tau = 0, 0.1, .., 2 (the release's sweep)
    python -m tools.posthoc runs/NAME --taus 0,0.5,1,1.5 --data.dir=/data/imagenet_lt --out sweep/

One pass of the newest checkpoint stores logits, features and labels; every tau is computed from them
(trainer/posthoc.py). Writes posthoc.csv, .json and .png into --out (default: the run folder) and prints
the table; `--section.key=value` overrides the run's config (a moved data folder, another backend).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losses import build_loss, log_prior
from pipelines import make_loader
from pipelines.fileio import atomic_write_bytes
from trainer import checkpoint, rundir
from trainer.metrics import accuracy_report
from trainer.models import build_model
from trainer.posthoc import GROUPS, head_of, logit_adjusted, logit_scale, tau_normalised
from trainer.recipe import load_config


def collect(run_dir: Path, overrides: list[str], device: torch.device) -> dict[str, Any]:
    """One pass of the run's newest checkpoint over its evaluation split: logits, features, labels (CPU)."""
    cfg = load_config(run_dir / rundir.CONFIG_FILE, overrides)
    state = checkpoint.load_latest(run_dir)
    results = run_dir / rundir.RESULTS_FILE
    where = dict(rank=0, world_size=1, device=device, seed=cfg.run.seed)
    if results.is_file():
        counts = tuple(json.loads(results.read_text())["class_counts"])
    else:
        train = make_loader(cfg.data, "train", **where)
        counts = train.meta.class_counts
        train.close()
    loss = build_loss(cfg.loss, counts).to(device)
    model = build_model(
        cfg.model, loss, num_classes=len(counts), class_counts=counts, mean=cfg.data.mean, std=cfg.data.std
    ).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    logits, features, labels = [], [], []
    loader = make_loader(cfg.data, "eval", **where)
    try:
        with torch.no_grad():
            for images, y in loader:
                out = model(images)
                logits.append(out.logits.float().cpu())
                features.append(out.features.float().cpu())
                labels.append(y.cpu())
    finally:
        loader.close()
    found = head_of(model)
    return {
        "counts": counts,
        "logits": torch.cat(logits),
        "features": torch.cat(features),
        "labels": torch.cat(labels),
        "head": found and (found[0], found[1].weight.detach().float().cpu()),
        "scale": logit_scale(loss),
        "epoch": state["epoch"],
    }


def groups(logits: torch.Tensor, labels: torch.Tensor, counts: tuple[int, ...]) -> dict[str, float | None]:
    c = len(counts)
    hit = (logits.argmax(1) == labels).double()
    count = torch.bincount(labels, minlength=c).double()
    correct = torch.zeros(c, dtype=torch.float64).index_add_(0, labels, hit)
    report = accuracy_report(count.tolist(), correct.tolist(), counts)
    return {g: report[g] for g in GROUPS}


def sweep(data: dict[str, Any], taus: list[float]) -> list[dict[str, Any]]:
    """A row per (method, tau): "la" post-hoc adjustment, "tau_norm" (when the model has one classifier)."""
    counts, labels = data["counts"], data["labels"]
    log_p = log_prior(counts)
    rows = [{"method": "plain", "tau": 0.0, **groups(data["logits"], labels, counts)}]
    for tau in taus:
        z = logit_adjusted(data["logits"], log_p, tau, data["scale"])
        rows.append({"method": "la", "tau": tau, **groups(z, labels, counts)})
    if data["head"]:
        head, weight = data["head"]
        for tau in taus:
            z = tau_normalised(data["features"], weight, tau, head)
            rows.append({"method": "tau_norm", "tau": tau, **groups(z, labels, counts)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<9} {'tau':>5} " + " ".join(f"{g:>7}" for g in GROUPS)]
    for r in rows:
        cells = " ".join("      -" if r[g] is None else f"{100 * r[g]:7.2f}" for g in GROUPS)
        lines.append(f"{r['method']:<9} {r['tau']:5.2f} {cells}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("la", "tau_norm") if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        mine = [r for r in rows if r["method"] == method]
        for g in GROUPS:
            ys = [np.nan if r[g] is None else 100 * r[g] for r in mine]
            ax.plot([r["tau"] for r in mine], ys, marker="o", markersize=3, label=g)
        ax.set(xlabel="tau", ylabel="accuracy (%)", title=f"{title}: {method}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--taus", default="", help="comma-separated tau values (default 0, 0.1, .., 2)")
    p.add_argument("--out", type=Path, help="folder for posthoc.csv/.json/.png (default: the run folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, overrides = p.parse_known_args(argv)
    taus = [float(t) for t in args.taus.split(",")] if args.taus else [round(0.1 * i, 2) for i in range(21)]
    data = collect(args.run_dir, overrides, torch.device(args.device))
    rows = sweep(data, taus)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["method", "tau", *GROUPS])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "posthoc.csv", text.getvalue().encode())
    atomic_write_bytes(out / "posthoc.json", json.dumps(rows, indent=1).encode())
    atomic_write_bytes(out / "posthoc.png", plot(rows, f"{args.run_dir.name} (epoch {data['epoch']})"))
    print(table(rows))
    print(f"\nwritten: {out / 'posthoc.csv'}, {out / 'posthoc.json'}, {out / 'posthoc.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
