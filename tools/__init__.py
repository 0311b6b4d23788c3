"""fastlt's command-line programs: the converter CLI, the demo and its data, the benchmarks.

Tools may import anything (`pipelines`, `losses`, `trainer`); nothing imports tools. Run them from the
repository root as modules (`python -m tools.benchmark`), which puts this checkout's packages first on the
path; `python tools/convert_datasets.py` keeps its script form, the converter's documented contract.
"""
