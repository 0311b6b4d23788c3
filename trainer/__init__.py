"""fastlt's trainer: config, models and heads, the compiled/captured step, the loop, metrics, checkpoints.

    config       the config tree: composes [data] (pipelines) and [loss] (losses) with the trainer's sections
    models       uint8 images -> losses.ModelOutput (ResNets, linear / cosine heads, BCL heads)
    optim        SGD with a 0-dim device learning rate;  schedule: lr as a pure function of the epoch
    step         TrainStep / EvalStep (eager, compiled, CUDA-graph captured);  metrics: per-class accuracy
    loop         fit / train_one_epoch / evaluate
    history      what a checkpoint carries besides the tensors, and results.json
    checkpoint   atomic checkpoint files;  rng: every generator's state;  rundir, plot: what a run writes
    environment  the versions / device / commit record of a run or a benchmark

Submodules are imported where they are used (importing `trainer` pulls in neither torch nor the loaders);
launch.py is the one place that wires them together.
"""
