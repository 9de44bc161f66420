"""Training runs and optimizer benchmarks, with JSON logs, checkpoints and exact resume.

* :func:`train` (``loop.py``): one optimizer on one problem under a :class:`Budget`
  (``budget.py``); JSON-lines log, atomic checkpoints, exact resume; its mini-batches come
  from ``batch_sampler.py`` and its progress bar from ``progress_bar.py``.
* :data:`REGISTRY` (``optimizers.py``): optimizer name → factory and learning-rate grid.
* :func:`run_benchmark` (``bench.py``): several optimizers, same budget, several seeds,
  learning rates chosen from the grid; returns the report that ``hesskit.report.html``
  renders.
* :func:`preconditioner_analysis` (``preconditioner_run.py``): each optimizer trained from
  the same start, its preconditioner measured against the exact GGN by
  :mod:`hesskit.analysis.preconditioner` along the run.
"""

from hesskit.training.bench import (
    BenchConfig,
    run_benchmark,
    select_learning_rate,
    tune_learning_rate,
)
from hesskit.training.budget import Budget
from hesskit.training.checkpoint import load_checkpoint, save_checkpoint
from hesskit.training.loop import TrainConfig, objective, train
from hesskit.training.optimizers import REGISTRY, OptimizerSpec, get_optimizer_spec
from hesskit.training.preconditioner_run import OptimizerChoice, preconditioner_analysis

__all__ = [
    "REGISTRY",
    "BenchConfig",
    "Budget",
    "OptimizerChoice",
    "OptimizerSpec",
    "TrainConfig",
    "get_optimizer_spec",
    "load_checkpoint",
    "objective",
    "preconditioner_analysis",
    "run_benchmark",
    "save_checkpoint",
    "select_learning_rate",
    "train",
    "tune_learning_rate",
]
