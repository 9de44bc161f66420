"""`hesskit train`: train one benchmark problem with one optimizer, with logs and checkpoints.

Writes ``log.jsonl`` (one JSON record per iteration; see ``hesskit.report.schema``) and an
atomic ``checkpoint.pt`` into ``--out`` (default ``hesskit-out/train/<problem>-<optimizer>``);
``--resume`` continues from that checkpoint exactly. The budget is the first of
``--iterations``, ``--time-limit`` (optimizer seconds) and ``--epochs`` reached.

Data parallel (Hessian-free): ``torchrun --nproc-per-node 2 -m hesskit train ...`` runs one
process per rank (gloo on the CPU, NCCL with ``--device cuda``); each works on its shard of
every batch and only rank 0 writes the log and checkpoints (docs/distributed.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hesskit.cli.options import non_negative_float, output_dir, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a benchmark problem with one optimizer (logs, checkpoints, resume)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--problem", required=True, help="e.g. digits-autoencoder")
    parser.add_argument("--optimizer", required=True,
                        help="hf, newton, rmsprop, adam, sgd or lbfgs")
    budget = parser.add_argument_group("budget (the first limit reached stops the run)")
    budget.add_argument("--iterations", type=positive_int, help="optimizer steps")
    budget.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                        help="optimizer wall-clock seconds (evaluation excluded)")
    budget.add_argument("--epochs", type=positive_float, help="epoch-equivalents of data")
    parser.add_argument("--batch-size", type=positive_int,
                        help="gradient mini-batch (default: all for hf/newton/lbfgs, else 128)")
    parser.add_argument("--lr", type=positive_float, help="learning rate (default: per optimizer)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    parser.add_argument("--initial-damping", type=non_negative_float, metavar="LAMBDA",
                        help="Hessian-free's λ at the first step (default: the problem's, "
                             "45 for Martens' autoencoders, 1 otherwise)")
    parser.add_argument("--data-dir", help="folder of MNIST/CURVES files")
    parser.add_argument("--eval-every", type=positive_int, default=10,
                        help="full train/test error every N iterations (default 10) and at the end")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50,
                        help="write a checkpoint every N iterations (default 50) and at the end")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out")
    parser.add_argument("--out",
                        help="output folder (default hesskit-out/train/<problem>-<optimizer>)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train (under torchrun: cuda uses NCCL, cpu gloo)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from hesskit.distributed import init_from_environment

    started_group = init_from_environment(args.device)
    try:
        return _train(args)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    from hesskit.distributed import rank
    from hesskit.problems import make_problem
    from hesskit.training.loop import Budget, TrainConfig, train
    from hesskit.training.optimizers import get_optimizer_spec

    get_optimizer_spec(args.optimizer)  # unknown name: one line before loading any data
    budget = Budget(iterations=args.iterations, seconds=args.time_limit, epochs=args.epochs)
    problem = make_problem(args.problem, seed=args.seed, data_dir=args.data_dir)
    if args.device != "cpu":
        _move_to(problem, args.device)
    out = output_dir(args.out or Path("hesskit-out", "train", f"{args.problem}-{args.optimizer}"))
    config = TrainConfig(args.optimizer, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         initial_damping=args.initial_damping)
    result = train(problem, config, budget, out_dir=out, resume=args.resume,
                   progress=not args.no_progress)
    last = result.records[-1]
    if rank() != 0:
        return 1 if result.diverged else 0
    print(f"stopped by {result.stopped_by} after {last.iteration} iterations, "
          f"{last.epochs:.3g} epochs, {last.wall_time:.3g} s, {last.products} curvature products")
    print(f"train error {result.final_train_error:.6g}, test error {result.final_test_error:.6g}")
    print(f"log: {out / 'log.jsonl'}")
    print(f"checkpoint: {out / 'checkpoint.pt'}")
    return 1 if result.diverged else 0


def _move_to(problem, device: str) -> None:
    """Model and data to ``device`` (under torchrun with NCCL: this process's GPU)."""
    import torch

    from hesskit.errors import InvalidArgumentError

    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("--device cuda needs a CUDA GPU and none is visible; "
                                   "use --device cpu")
    target = torch.device(device, torch.cuda.current_device()) if device == "cuda" else device
    problem.model.to(target)
    problem.train = tuple(t.to(target) for t in problem.train)
    problem.test = tuple(t.to(target) for t in problem.test)
