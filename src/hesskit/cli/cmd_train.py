"""`hesskit train`: train one benchmark problem with one optimizer, with logs and checkpoints.

Writes ``log.jsonl`` (one JSON record per iteration; see ``hesskit.report.schema``) and an
atomic ``checkpoint.pt`` into ``--out`` (default ``hesskit-out/train/<problem>-<optimizer>``);
``--resume`` continues from that checkpoint exactly, once its checksum, entries, shapes and
values have been checked. A new run into a folder that holds one is refused (``--overwrite``
moves the old run aside to ``<out>.old-<time>``). The budget is the first of
``--iterations``, ``--time-limit`` (optimizer seconds) and ``--epochs`` reached. A run whose
objective becomes NaN or infinite stops with one line on stderr and exit code 2.

Your own model instead of a benchmark problem: ``--model module:function`` (see
``hesskit hessian --help``); its data is held in memory (a list of batches or a DataLoader
is read once and concatenated), there is no test set, and the reported error is the loss
on all of the data.

Curvature during training: ``--track-curvature`` measures the sharpness λ_max (and, by
``--curvature-quantities``, the top-k eigenvalues, the trace, each layer's sharpness) of the
objective's Hessian or Gauss-Newton matrix on one fixed batch every ``--curvature-every``
steps, appends each measurement to ``curvature.jsonl`` in ``--out``, draws it against 2/η
in ``index.html`` there, and prints the share of wall time spent measuring. It changes
nothing of the training (parameters, buffers and generators are left as they were), and
``--resume`` continues it without a lost or repeated line.

Data parallel (Hessian-free): ``torchrun --nproc-per-node 2 -m hesskit train ...`` runs one
process per rank (gloo on the CPU, NCCL with ``--device cuda``); each works on its shard of
every batch and only rank 0 writes the log and checkpoints (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hesskit.cli.model_spec import add_user_model_option
from hesskit.cli.options import (
    DATA_DIR_HELP,
    OPTIMIZER_NAMES,
    float_below,
    non_negative_float,
    output_dir,
    positive_float,
    positive_int,
    problem_help,
    problem_name,
    seed,
)

MAX_LR = 1e6
MAX_COLLECTIVE_TIMEOUT = 24 * 3600.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a benchmark problem with one optimizer (logs, checkpoints, resume)",
        description=__doc__,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--problem", type=problem_name, help=problem_help())
    add_user_model_option(what, extra="; instead of --problem")
    parser.add_argument("--optimizer", required=True,
                        help=", ".join(OPTIMIZER_NAMES))
    budget = parser.add_argument_group("budget (the first limit reached stops the run)")
    budget.add_argument("--iterations", type=positive_int, help="optimizer steps")
    budget.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                        help="optimizer wall-clock seconds (evaluation excluded)")
    budget.add_argument("--epochs", type=positive_float, help="epoch-equivalents of data")
    budget.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="how --time-limit seconds are counted: wall (elapsed, default) "
                             "or process (CPU time of this process)")
    parser.add_argument("--batch-size", type=positive_int,
                        help="gradient mini-batch (default: all for hf/newton/lbfgs, else 128)")
    parser.add_argument("--lr", type=float_below(MAX_LR),
                        help=f"learning rate in (0, {MAX_LR:g}] (default: per optimizer)")
    parser.add_argument("--seed", type=seed, default=0, help="initialisation and batch order")
    parser.add_argument("--initial-damping", type=non_negative_float, metavar="LAMBDA",
                        help="Hessian-free's λ at the first step (default: the problem's, "
                             "45 for Martens' autoencoders, 1 otherwise)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--eval-every", type=positive_int, default=10,
                        help="full train/test error every N iterations (default 10) and at the end")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50,
                        help="write a checkpoint every N iterations (default 50) and at the end")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint in --out (checked first: checksum, "
                            "entries, shapes, finite values)")
    again.add_argument("--overwrite", action="store_true",
                       help="if --out already holds a run, move it aside to "
                            "<out>.old-<time> (never deleted) and start afresh; without it, "
                            "a new run into a folder that holds one is refused")
    parser.add_argument("--out",
                        help="output folder (default hesskit-out/train/<problem>-<optimizer>)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train (under torchrun: cuda uses NCCL, cpu gloo)")
    parser.add_argument("--collective-timeout", type=float_below(MAX_COLLECTIVE_TIMEOUT),
                        default=120.0, metavar="SECONDS",
                        help="under torchrun: a collective that makes no progress for this "
                             "long (a hung or stopped peer) ends every surviving rank with "
                             "one line naming the lost rank (default 120)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_curvature_options(parser)
    parser.set_defaults(run=run)


def _curvature_quantities(text: str) -> tuple[str, ...]:
    from hesskit.training.curvature_tracking import QUANTITIES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in QUANTITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown curvature quantity {', '.join(map(repr, unknown)) or '(none)'}; "
            f"choose among {', '.join(QUANTITIES)}")
    return names


def _add_curvature_options(parser: argparse.ArgumentParser) -> None:
    from hesskit.training.curvature_tracking import DEFAULT_BATCH_SIZE, DEFAULT_EVERY, DEFAULT_K

    group = parser.add_argument_group("curvature during training (--track-curvature)")
    group.add_argument("--track-curvature", action="store_true",
                       help="measure the curvature of the objective on a fixed batch along "
                            "the run (curvature.jsonl and index.html in --out; off by default)")
    group.add_argument("--curvature-every", type=positive_int, metavar="N",
                       help=f"measure at step 0 and every N steps (default {DEFAULT_EVERY})")
    group.add_argument("--curvature-quantities", type=_curvature_quantities, metavar="LIST",
                       help="comma list of sharpness (top eigenvalue, always measured), top-k "
                            "(--curvature-k largest), trace (Hutchinson, 10 probes), blocks "
                            "(each layer's sharpness) (default sharpness,trace)")
    group.add_argument("--curvature-k", type=positive_int, metavar="K",
                       help=f"eigenvalues for top-k (default {DEFAULT_K})")
    group.add_argument("--curvature-batch-size", type=positive_int, metavar="N",
                       help="samples of the fixed measurement batch, drawn once from the "
                            f"training set with --seed (default {DEFAULT_BATCH_SIZE}, or the "
                            "whole set if smaller)")
    group.add_argument("--curvature-matrix", choices=("hessian", "ggn"),
                       help="the Hessian or the Gauss-Newton matrix (default hessian)")


CURVATURE_OPTIONS = {"curvature_every": "every", "curvature_quantities": "quantities",
                     "curvature_k": "k", "curvature_batch_size": "batch_size",
                     "curvature_matrix": "matrix"}


def curvature_settings(args: argparse.Namespace):
    """The run's :class:`CurvatureTracking` from the options (None without tracking).

    Raises:
        InvalidArgumentError: a --curvature-* option without --track-curvature.
    """
    from hesskit.errors import InvalidArgumentError
    from hesskit.training.curvature_tracking import CurvatureTracking

    given = {field: getattr(args, option) for option, field in CURVATURE_OPTIONS.items()
             if getattr(args, option, None) is not None}
    if not args.track_curvature:
        if given:
            option = next(o for o, f in CURVATURE_OPTIONS.items() if f in given)
            raise InvalidArgumentError(f"--{option.replace('_', '-')} needs --track-curvature")
        return None
    return CurvatureTracking(**given)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from hesskit.distributed import init_from_environment
    from hesskit.errors import PeerLostError

    started_group = init_from_environment(args.device, timeout_s=args.collective_timeout)
    try:
        return _train(args)
    except PeerLostError:
        started_group = False  # tearing down a group with a lost peer waits on it
        raise
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    from hesskit.distributed import rank
    from hesskit.finite import check_training_data
    from hesskit.problems import make_problem
    from hesskit.run_folder import prepare_run_folder
    from hesskit.training.loop import RUN_FILES, Budget, TrainConfig, train
    from hesskit.training.optimizers import get_optimizer_spec

    get_optimizer_spec(args.optimizer)  # unknown name: one line before loading any data
    curvature = curvature_settings(args)
    budget = Budget(iterations=args.iterations, seconds=args.time_limit, epochs=args.epochs)
    label = args.model.rpartition(":")[2] if args.model else args.problem
    out = Path(args.out or Path("hesskit-out", "train", f"{label}-{args.optimizer}"))
    if rank() == 0 or not args.overwrite:  # one rank moves an old run aside
        moved = prepare_run_folder(out, RUN_FILES, overwrite=args.overwrite,
                                   resume=args.resume, resume_hint="--resume")
        if moved is not None:
            print(f"hesskit: note: moved the previous run in {str(out)!r} to {str(moved)!r}",
                  file=sys.stderr, flush=True)
    if args.model:
        from hesskit.cli.user_training import user_training_problem

        problem = user_training_problem(args.model)
    else:
        problem = make_problem(args.problem, seed=args.seed, data_dir=args.data_dir)
    check_training_data(problem)
    if args.device != "cpu":
        _move_to(problem, args.device)
    out = output_dir(out)
    config = TrainConfig(args.optimizer, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         initial_damping=args.initial_damping, clock=args.clock,
                         curvature=curvature)
    result = train(problem, config, budget, out_dir=out, resume=args.resume,
                   progress=not args.no_progress)
    last = result.records[-1]
    if rank() != 0:
        return 2 if result.diverged else 0
    print(f"stopped by {result.stopped_by} after {last.iteration} iterations, "
          f"{last.epochs:.3g} epochs, {last.wall_time:.3g} s, {last.products} curvature products")
    if args.model:
        print(f"loss on all the data {result.final_train_error:.6g}")
    else:
        print(f"train error {result.final_train_error:.6g}, "
              f"test error {result.final_test_error:.6g}")
    print(f"log: {out / 'log.jsonl'}")
    print(f"checkpoint: {out / 'checkpoint.pt'}")
    if config.curvature is not None:
        _report_curvature(out)
    if result.diverged:
        print(f"hesskit train: error: the objective became NaN or infinite at iteration "
              f"{last.iteration} (lr {result.lr:g}); lower --lr, or for hf raise "
              "--initial-damping", file=sys.stderr)
        return 2
    return 0


def _report_curvature(out: Path) -> None:
    """Print the overhead line and write the run's page with the curvature figure."""
    from hesskit.report.curvature_plots import read_curvature_log, write_train_page
    from hesskit.training.curvature_tracking import CURVATURE_LOG_NAME

    log = out / CURVATURE_LOG_NAME
    _, lines, summary = read_curvature_log(log)
    if summary is not None:
        print(f"curvature: {summary['measurements']} measurements took "
              f"{summary['measure_seconds']:.3g} s of {summary['elapsed_seconds']:.3g} s "
              f"({100 * summary['overhead']:.1f}% of the wall time); log: {log}")
    if lines:
        print(f"report: {write_train_page(out, log)}")


def _move_to(problem, device: str) -> None:
    """Model and data to ``device`` (under torchrun with NCCL: this process's GPU)."""
    import torch

    from hesskit.errors import InvalidArgumentError

    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("--device cuda needs a CUDA GPU and none is visible; "
                                   "use --device cpu")
    target = torch.device(device, torch.cuda.current_device()) if device == "cuda" else device
    from hesskit.tensor_tree import to_device

    problem.model.to(target)
    problem.train = tuple(to_device(side, target) for side in problem.train)
    problem.test = tuple(to_device(side, target) for side in problem.test)
