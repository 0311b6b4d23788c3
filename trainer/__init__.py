"""fastlt's trainer: config, models and heads, the compiled/captured step, the loop, metrics, checkpoints.

    config      the frozen config tree, TOML recipes and `--section.key=value` overrides
    models      uint8 images -> losses.ModelOutput (ResNets, linear / cosine heads, BCL heads)
    optim       SGD with a 0-dim device learning rate;  schedule: lr as a pure function of the epoch
    step        TrainStep / EvalStep (eager, compiled, CUDA-graph captured);  metrics: per-class accuracy
    loop        fit / train_one_epoch / evaluate;  checkpoint, rundir, plot: what a run writes

Submodules are imported where they are used (importing `trainer` pulls in neither torch nor the loaders);
launch.py is the one place that wires them together.
"""
