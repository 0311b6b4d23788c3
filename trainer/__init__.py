"""fastlt's trainer: config, model kinds, the compiled / captured step, the loop, metrics, checkpoints.

docs/ARCHITECTURE.md lists its modules and their seams. Submodules are imported where they are used
(importing `trainer` pulls in neither torch nor the loaders); launch.py is the one place that wires them
together.
"""
