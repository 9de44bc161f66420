"""hesskit's curvature optimizers against AdamW on a character-level GPT-2 (issue 22).

Model: ``transformers.GPT2LMHeadModel`` from a ``GPT2Config`` (4 layers, width 128, 4
heads, context 128, vocabulary = the characters of the text, every dropout 0), float32,
trained on The Devil's Dictionary (``shared/data/text/devils_dictionary.txt``, checked by
its sha256): the first 90 % of the characters for training, the last 10 % for validation.
Loss: ``hesskit.losses.CausalLMLoss`` on the logits (``hesskit.tensor_tree.call_model``).

Training data: the windows of 128 characters starting every ``STRIDE`` characters of the
training split; a run draws batches of ``BATCH`` windows from a permutation seeded by the
run's seed (the same seed initialises the model). Validation: ``VAL_WINDOWS`` windows
evenly spaced over the validation split, the same for every run.

Methods (one ``make_*`` and the shared ``step`` per method: construction and the step call
are isolated, so a constructor change is a one-line edit):

* AdamW (``torch.optim.AdamW``, torch's defaults except lr);
* K-FAC (``hesskit.KFAC``, the published method: lr = 1, α/μ from the exact
  Gauss-Newton quadratic model, adaptive λ and γ), with the inverse interval T₃ = 10 (the
  paper's is 20) set through ``KFACSchedule``;
* Shampoo (``hesskit.Shampoo``, grafted onto Adam; defaults: first
  preconditioner at step 100, roots every 100 steps), with AdamW's swept lr (the graft
  gives every layer Adam's step length);
* Sophia-G (``hesskit.Sophia``, the Gauss-Newton-Bartlett estimate on the
  step's batch every k = 10 steps; betas (0.965, 0.99), ρ = 0.04, weight decay 0.2);
* AdaHessian (``hesskit.AdaHessian``, the authors' defaults except lr);
* stochastic Hessian-free (``hesskit.StochasticHessianFree``: the
  Gauss-Newton operator on a tenth of each gradient batch, CG capped at 25, LM damping;
  a fixed gradient batch of ``BATCH`` windows, i.e. Kiros 2013's fixed sizes (γ = 1), so
  it sees the same batches sizes as the others).

A learning-rate sweep (one seed, a third of the budget, best final validation loss) is
given to AdamW, Sophia (its default 1e-4 included) and AdaHessian (its default 0.15
included); Shampoo takes AdamW's; K-FAC (lr = 1, the step length chosen by its quadratic
model) and stochastic HF (no learning rate) run their published settings.

Budget: every run gets the same CPU time (``time.process_time``, one thread) for its
steps; the validation evaluations every ``budget / EVALS`` seconds are not counted. A run
whose loss is not finite or whose validation loss exceeds ``DIVERGED`` stops there; a run
that raises records the error line. Writes ``benchmarks/results/transformer_optimizers/``
(``results.json``, ``curves.png``, ``report.html``, ``README.md``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/transformer_optimizers.py`` (about 45 min on one
core) or ``--quick`` (a few seconds a run, to check every method).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import io
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from hesskit.losses import CausalLMLoss
from hesskit.tensor_tree import call_model

DATA = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
        / "devils_dictionary.txt")
SHA256 = "d149cb797e50e6069e87362a7260977c56f035d3480c9b1282173e403aa81990"
RESULTS = Path(__file__).resolve().parent / "results" / "transformer_optimizers"

PARTIAL = Path("/tmp") / "transformer_optimizers_partial.json"  # progress, never committed

CONTEXT = 128
BATCH = 8
STRIDE = 64
VAL_WINDOWS = 64
EVALS = 12
DIVERGED = 10.0  # validation loss (nats/char); the uniform guess over ~80 chars is ln 80 ≈ 4.4
SEEDS = (0, 1, 2)

SWEEPS = {
    "adamw": [3e-4, 1e-3, 3e-3],
    "sophia": [1e-4, 3e-4, 1e-3, 3e-3],
    "adahessian": [0.015, 0.05, 0.15],
}
DEFAULT_LR = {"adamw": 1e-3, "shampoo": 1e-3, "sophia": 1e-4, "adahessian": 0.15,
              "kfac": 1.0, "kfac-low-damping": 1.0, "shf": None}
NAMES = {"adamw": "AdamW", "kfac": "K-FAC", "kfac-low-damping": "K-FAC λ₀ 0.1",
         "shampoo": "Shampoo", "sophia": "Sophia-G",
         "adahessian": "AdaHessian", "shf": "Stochastic HF"}


# -- data ---------------------------------------------------------------------------------

def load_text(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        sys.exit(f"refusing {path}: sha256 {digest} is not the expected {SHA256}")
    text = raw.decode("utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], vocab


def windows(ids: torch.Tensor, stride: int) -> torch.Tensor:
    starts = torch.arange(0, len(ids) - CONTEXT + 1, stride)
    return torch.stack([ids[s: s + CONTEXT] for s in starts.tolist()])


def val_windows(ids: torch.Tensor) -> torch.Tensor:
    starts = torch.linspace(0, len(ids) - CONTEXT, VAL_WINDOWS).long()
    return torch.stack([ids[s: s + CONTEXT] for s in starts.tolist()])


# -- model --------------------------------------------------------------------------------

def make_model(vocab_size: int, seed: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=CONTEXT,
                        vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, summary_first_dropout=0.0,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.train()
    return model


def batch_loss(model: torch.nn.Module, loss: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return loss(call_model(model, {"input_ids": ids}), ids)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss: torch.nn.Module, val: torch.Tensor) -> float:
    return float(sum(batch_loss(model, loss, chunk) * len(chunk) for chunk in val.split(32))
                 / len(val))


# -- the methods: construction and one step -------------------------------------------------

class Run:
    """What a method's step needs: the model, the loss, the batch of this step."""

    def __init__(self, model, loss, train, seed):
        self.model, self.loss, self.train = model, loss, train
        self.ids: torch.Tensor | None = None
        self.tokens = 0

    def closure(self, backward: bool = True) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            for p in self.model.parameters():
                p.grad = None
            value = batch_loss(self.model, self.loss, self.ids)
            if backward:
                value.backward()
            return value
        return closure


def make_adamw(run: Run, lr: float, seed: int):
    return torch.optim.AdamW(run.model.parameters(), lr=lr)


def make_kfac(run: Run, lr: float, seed: int, initial_damping: float = 150.0):
    from hesskit.optim.kfac import KFAC, KFACSchedule

    return KFAC(run.model.parameters(), lr, model=run.model, loss=run.loss, seed=seed,
                schedule=KFACSchedule(inverse_interval=10, initial_damping=initial_damping))


def make_kfac_low_damping(run: Run, lr: float, seed: int):
    """K-FAC with λ₀ = 0.1 instead of the paper's 150 (a named deviation: the setting
    the MNIST-classifier benchmark recommends for short runs)."""
    return make_kfac(run, lr, seed, initial_damping=0.1)


def make_shampoo(run: Run, lr: float, seed: int):
    from hesskit import Shampoo

    return Shampoo(run.model.parameters(), lr=lr)


def make_sophia(run: Run, lr: float, seed: int):
    from hesskit import Sophia

    return Sophia(run.model.parameters(), lr, model=run.model, loss=run.loss, seed=seed)


def make_adahessian(run: Run, lr: float, seed: int):
    from hesskit import AdaHessian

    return AdaHessian(run.model.parameters(), lr, model=run.model, loss=run.loss, seed=seed)


def make_shf(run: Run, lr: float | None, seed: int):
    from hesskit.optim.hessian_free.stochastic import BatchGrowth, StochasticHessianFree

    data = ({"input_ids": run.train}, run.train)
    return StochasticHessianFree(run.model, run.loss, data, seed=seed,
                                 batches=BatchGrowth(initial=BATCH, growth=1.0))


MAKERS = {"adamw": make_adamw, "kfac": make_kfac, "kfac-low-damping": make_kfac_low_damping,
          "shampoo": make_shampoo,
          "sophia": make_sophia, "adahessian": make_adahessian, "shf": make_shf}


def step(method: str, optimizer, run: Run) -> float:
    """One step of ``method`` on ``run.ids`` through the one closure (zero_grad, loss,
    backward; SHF draws its own batch); returns the loss."""
    value = optimizer.step() if method == "shf" else optimizer.step(run.closure())
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def tokens_of_step(method: str, optimizer) -> int:
    if method == "shf":
        return int(optimizer.hf_state["batch_size"]) * CONTEXT
    return BATCH * CONTEXT


def health(method: str, optimizer) -> dict:
    state = {"kfac": "kfac_state", "kfac-low-damping": "kfac_state",
             "sophia": "sophia_state", "adahessian": "adahessian_state",
             "shf": "hf_state"}.get(method)
    if state is None:
        return {}
    values = getattr(optimizer, state)
    out = {}
    for key in ("nonfinite_rejections", "damping", "gamma", "last_alpha", "last_mu",
                "last_ratio", "estimates", "steps", "rejected_steps", "cg_iterations",
                "last_step_size", "curvature_products"):
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value if math.isfinite(value) else str(value)
    return out


# -- one run ------------------------------------------------------------------------------

def train_run(method: str, lr, seed: int, budget: float, data: dict) -> dict:
    torch.manual_seed(seed)
    model = make_model(len(data["vocab"]), seed)
    loss = CausalLMLoss()
    run = Run(model, loss, data["train"], seed)
    order = torch.Generator().manual_seed(1000 + seed)
    record = {"method": method, "lr": lr, "seed": seed, "budget_seconds": budget,
              "curve": [], "step_seconds": [], "error": None, "diverged": False}
    val = data["val"]
    curve = record["curve"]
    curve.append({"cpu_seconds": 0.0, "tokens": 0, "steps": 0, "train_loss": None,
                  "val_loss": evaluate(model, loss, val)})
    try:
        optimizer = MAKERS[method](run, lr, seed)
    except Exception as error:
        record["error"] = _error_line(error)
        return record
    permutation, cursor = torch.randperm(len(data["train"]), generator=order), 0
    elapsed, steps, tokens, since = 0.0, 0, 0, []
    interval = budget / EVALS
    next_eval = interval
    while elapsed < budget:
        if cursor + BATCH > len(permutation):
            permutation, cursor = torch.randperm(len(data["train"]), generator=order), 0
        run.ids = data["train"][permutation[cursor: cursor + BATCH]]
        cursor += BATCH
        start = time.process_time()
        try:
            value = step(method, optimizer, run)
        except Exception as error:
            record["error"] = f"step {steps + 1}: {_error_line(error)}"
            record["traceback"] = traceback.format_exc().splitlines()[-6:]
            break
        seconds = time.process_time() - start
        elapsed += seconds
        record["step_seconds"].append(seconds)
        steps += 1
        tokens += tokens_of_step(method, optimizer)
        since.append(value)
        if not math.isfinite(value):
            record["diverged"] = True
            record["error"] = f"step {steps}: non-finite training loss {value}"
        if elapsed >= next_eval or elapsed >= budget or record["diverged"]:
            v = evaluate(model, loss, val)
            finite = [x for x in since if math.isfinite(x)]
            curve.append({"cpu_seconds": elapsed, "tokens": tokens, "steps": steps,
                          "train_loss": statistics.fmean(finite) if finite else None,
                          "val_loss": v if math.isfinite(v) else None})
            since = []
            next_eval = (math.floor(elapsed / interval) + 1) * interval
            if not (math.isfinite(v) and v < DIVERGED):
                record["diverged"] = True
                record["error"] = record["error"] or f"step {steps}: validation loss {v}"
            if record["diverged"]:
                break
    record["steps"] = steps
    record["tokens"] = tokens
    record["median_step_seconds"] = (statistics.median(record["step_seconds"])
                                     if record["step_seconds"] else None)
    record["final_val_loss"] = curve[-1]["val_loss"] if not record["diverged"] else None
    record["health"] = health(method, optimizer)
    steps_list = record.pop("step_seconds")
    record["step_seconds_first10"] = steps_list[:10]
    print(f"  {NAMES[method]:<14} lr {lr!s:<7} seed {seed}: {steps:>5} steps, "
          f"{tokens:>9} tokens, median step {record['median_step_seconds'] or 0:.3f} s, "
          f"val {curve[0]['val_loss']:.3f} -> {curve[-1]['val_loss']}"
          + (f"  ERROR {record['error']}" if record["error"] else ""), flush=True)
    return record


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# -- summary ------------------------------------------------------------------------------

def value_at(curve: list[dict], key: str, x: float) -> float | None:
    """The validation loss at ``key`` = x, linearly interpolated between evaluations;
    None past the end of the curve."""
    points = [(c[key], c["val_loss"]) for c in curve if c["val_loss"] is not None]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points and abs(points[-1][0] - x) <= 1e-9 * max(1.0, x):
        return points[-1][1]
    return None


def first_reach(curve: list[dict], target: float) -> float | None:
    """CPU seconds at which the validation loss first reaches ``target`` (interpolated)."""
    points = [(c["cpu_seconds"], c["val_loss"]) for c in curve if c["val_loss"] is not None]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if y1 <= target:
            return x1 if y0 == y1 else x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_reach(times) -> float | None:
    """The median of reach times with "never" as +∞: None when most runs never reach."""
    value = statistics.median([math.inf if t is None else t for t in times])
    return None if math.isinf(value) else value


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    adam = runs["adamw"]
    adam_final = median(r["final_val_loss"] for r in adam)
    adam_tokens = median(r["tokens"] for r in adam)
    adam_step = median(r["median_step_seconds"] for r in adam)
    adam_time = (median_reach([first_reach(r["curve"], adam_final) for r in adam])
                 if adam_final is not None else None)
    table = {}
    for method, records in runs.items():
        errors = [f"seed {r['seed']}: {r['error']}" for r in records if r["error"]]
        reach = [first_reach(r["curve"], adam_final) if adam_final is not None else None
                 for r in records]
        reached = [t for t in reach if t is not None]
        step_s = median(r["median_step_seconds"] for r in records)
        table[method] = {
            "final_val_loss": median(r["final_val_loss"] for r in records),
            "final_val_losses": [r["final_val_loss"] for r in records],
            "time_to_adamw_final": (median_reach(reach) / adam_time
                                    if median_reach(reach) is not None and adam_time else None),
            "seeds_reaching_adamw_final": len(reached),
            "val_loss_at_adamw_tokens": median(value_at(r["curve"], "tokens", adam_tokens)
                                               for r in records),
            "tokens_median": median(r["tokens"] for r in records),
            "adamw_val_loss_at_these_tokens": median(
                value_at(r["curve"], "tokens", median(x["tokens"] for x in records))
                for r in adam),
            "median_step_seconds": step_s,
            "step_cost_vs_adamw": step_s / adam_step if step_s and adam_step else None,
            "errors": errors,
        }
    table["_reference"] = {"adamw_final_val_loss": adam_final, "adamw_tokens": adam_tokens,
                           "adamw_seconds_to_final": adam_time,
                           "adamw_median_step_seconds": adam_step}
    return table


def fmt(x, spec=".3f", none="—"):
    return none if x is None else format(x, spec)


def table_markdown(table: dict, settings: dict) -> str:
    ref = table["_reference"]
    lines = ["| method | lr | final val loss (median of 3) | CPU time to AdamW's final "
             "(× AdamW) | val loss at AdamW's tokens | tokens seen (median) | "
             "AdamW's val loss at its tokens | step CPU (median) | step cost (× AdamW) | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, row in table.items():
        if method.startswith("_"):
            continue
        if row["time_to_adamw_final"] is not None:
            reach = f"{row['time_to_adamw_final']:.2f}"
        elif row["seeds_reaching_adamw_final"]:
            reach = f"not reached ({row['seeds_reaching_adamw_final']}/3 seeds reached)"
        else:
            reach = "not reached"
        at_tokens = row["val_loss_at_adamw_tokens"]
        lines.append(
            f"| {NAMES[method]} | {settings['lr'][method]} | {fmt(row['final_val_loss'])} | "
            f"{reach} | {fmt(at_tokens) if at_tokens is not None else 'not reached'} | "
            f"{fmt(row['tokens_median'], ',.0f')} | {fmt(row['adamw_val_loss_at_these_tokens'])} | "
            f"{fmt(row['median_step_seconds'], '.3f')} s | "
            f"{fmt(row['step_cost_vs_adamw'], '.2f')} | "
            f"{'; '.join(row['errors']) if row['errors'] else ''} |")
    lines.append("")
    lines.append("AdamW's final validation loss (median): "
                 f"{fmt(ref['adamw_final_val_loss'], '.4f')}, "
                 f"reached at {fmt(ref['adamw_seconds_to_final'], '.1f')} CPU s; AdamW's tokens: "
                 f"{fmt(ref['adamw_tokens'], ',.0f')}; AdamW step: "
                 f"{fmt(ref['adamw_median_step_seconds'], '.3f')} s.")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for method, records in runs.items():
        for ax, key in zip(axes, ("cpu_seconds", "tokens"), strict=True):
            curves = [[(c[key], c["val_loss"]) for c in r["curve"] if c["val_loss"] is not None]
                      for r in records]
            curves = [c for c in curves if len(c) > 1]
            if not curves:
                continue
            end = min(c[-1][0] for c in curves)
            grid = [end * i / 50 for i in range(51)]
            ys = [[_interp(c, x) for x in grid] for c in curves]
            columns = list(zip(*ys, strict=True))
            line, = ax.plot(grid, [statistics.fmean(col) for col in columns],
                            label=NAMES[method])
            ax.fill_between(grid, [min(col) for col in columns], [max(col) for col in columns],
                            color=line.get_color(), alpha=0.2)
    for ax, label in zip(axes, ("CPU seconds (1 thread)", "training tokens"), strict=True):
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_ylim(top=min(4.6, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("char-level GPT-2 (4×128) on The Devil's Dictionary: mean over 3 seeds, "
                 "min/max band")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _interp(points, x):
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def environment(threads: int) -> dict:
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average": os.getloadavg(), "date": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


# -- main ---------------------------------------------------------------------------------

_DATA: dict = {}


def _task(task: tuple) -> dict:
    torch.set_num_threads(1)
    return train_run(*task, _DATA)


def run_tasks(tasks: list[tuple], data: dict, jobs: int) -> list[dict]:
    """``train_run`` over the tasks (method, lr, seed, budget), in ``jobs`` single-threaded
    worker processes (each run's CPU time is its own process's, so the measure does not
    change); the results in the tasks' order."""
    _DATA.update(data)
    import transformers  # noqa: F401 - once, before the workers fork

    if jobs <= 1:
        return [_task(t) for t in tasks]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=1) as pool:
        return pool.map(_task, tasks, chunksize=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget-seconds", type=float, default=120.0,
                        help="CPU seconds of steps per run (default: ~45 min in all)")
    parser.add_argument("--sweep-fraction", type=float, default=1 / 3,
                        help="the lr sweep's budget as a fraction of --budget-seconds")
    parser.add_argument("--quick", action="store_true", help="a few seconds per run")
    parser.add_argument("--methods", default=",".join(MAKERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each in its own one-thread process")
    parser.add_argument("--summarize", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only rewrite the summary, table, figure and report of a "
                             "results.json (into --out)")
    args = parser.parse_args()
    if args.summarize is not None:
        write_outputs(json.loads(args.summarize.read_text()), args.out)
        return
    torch.set_num_threads(1)
    budget = 3.0 if args.quick else args.budget_seconds
    sweep_budget = budget * (1.0 if args.quick else args.sweep_fraction)
    methods = [m for m in args.methods.split(",") if m]
    if "adamw" not in methods:
        methods.insert(0, "adamw")

    train_ids, val_ids, vocab = load_text(args.data)
    data = {"train": windows(train_ids, STRIDE), "val": val_windows(val_ids), "vocab": vocab}
    print(f"{len(train_ids) + len(val_ids)} chars, vocabulary {len(vocab)}, "
          f"{len(data['train'])} training windows, {len(data['val'])} validation windows; "
          f"budget {budget} CPU s a run, sweep {sweep_budget} s", flush=True)
    env_start = environment(torch.get_num_threads())
    wall = time.time()

    sweeps, lr = {}, {}
    grids = {m: SWEEPS[m] for m in methods if m in SWEEPS and not args.quick}
    tasks = [(m, value, 0, sweep_budget) for m, grid in grids.items() for value in grid]
    if tasks:
        print(f"sweeps: {grids}", flush=True)
    results = run_tasks(tasks, data, args.jobs)
    for method in grids:
        rows = [r for r in results if r["method"] == method]
        sweeps[method] = [{"lr": r["lr"], "final_val_loss": r["final_val_loss"],
                           "error": r["error"], "curve": r["curve"]} for r in rows]
        finite = [r for r in rows if r["final_val_loss"] is not None]
        lr[method] = (min(finite, key=lambda r: r["final_val_loss"])["lr"] if finite
                      else DEFAULT_LR[method])
        print(f"  {NAMES[method]} -> lr {lr[method]}", flush=True)
    for method in methods:
        if method == "shampoo" and "adamw" in grids:
            lr[method] = lr["adamw"]  # grafted onto Adam: Adam's step length, AdamW's lr
        lr.setdefault(method, DEFAULT_LR[method])

    tasks = [(m, lr[m], seed, budget) for m in methods for seed in SEEDS]
    results = run_tasks(tasks, data, args.jobs)
    runs = {m: [r for r in results if r["method"] == m] for m in methods}
    PARTIAL.write_text(json.dumps({"lr": lr, "sweeps": sweeps, "runs": runs}))

    settings = {
        "model": "GPT2LMHeadModel(n_layer=4, n_embd=128, n_head=4, n_positions=128, "
                 "pdrop 0, float32)",
        "parameters": sum(p.numel() for p in make_model(len(vocab), 0).parameters()),
        "context": CONTEXT, "batch": BATCH, "stride": STRIDE, "val_windows": VAL_WINDOWS,
        "vocab_size": len(vocab), "budget_seconds": budget, "sweep_budget_seconds":
        sweep_budget, "evals_per_run": EVALS, "seeds": list(SEEDS), "lr": lr,
        "sweeps_grids": {m: g for m, g in SWEEPS.items() if m in methods},
        "quick": args.quick, "diverged_above": DIVERGED, "jobs": args.jobs,
        "kfac": "KFAC(model.parameters(), 1, model=model, loss=CausalLMLoss(), seed=seed, "
                "schedule=KFACSchedule(inverse_interval=10)); other constants the paper's",
        "kfac-low-damping": "as kfac with KFACSchedule(initial_damping=0.1) (a deviation: "
                            "the MNIST-classifier setting)",
        "shampoo": "Shampoo(params, lr=AdamW's swept lr) defaults: betas (0.9, 0.999), "
                   "update_freq 100, "
                   "start_preconditioning_step 100, Adam graft",
        "sophia": "Sophia(params, lr, model=model, loss=loss) (the step's batch) defaults: "
                  "GNB estimator, betas (0.965, 0.99), rho 0.04, wd 0.2, interval 10",
        "adahessian": "AdaHessian(params, lr, model=model, loss=loss) defaults: "
                      "betas (0.9, 0.999), eps 1e-4, wd 0, update_each 1",
        "shf": f"StochasticHessianFree(model, loss, train windows, batches=BatchGrowth("
               f"initial={BATCH}, growth=1.0)); curvature fraction 0.1, CG cap 25, λ₀ 45",
        "adamw": "torch.optim.AdamW(params, lr) defaults: betas (0.9, 0.999), wd 0.01",
    }
    command = " ".join([Path(sys.executable).name, *sys.argv])
    out = {"benchmark": "transformer_optimizers", "command": command,
           "wall_seconds": time.time() - wall, "environment": env_start,
           "environment_end": environment(torch.get_num_threads()),
           "data": {"path": str(args.data), "sha256": SHA256,
                    "chars": len(train_ids) + len(val_ids), "train_chars": len(train_ids),
                    "val_chars": len(val_ids)},
           "settings": settings, "sweeps": sweeps, "runs": runs}
    write_outputs(out, args.out)


def write_outputs(out: dict, folder: Path) -> None:
    """The summary (into ``out``), results.json, curves.png, README.md and report.html."""
    out["summary"] = summarize(out["runs"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(out, indent=1))
    png = plot(out["runs"], folder / "curves.png")
    markdown = table_markdown(out["summary"], out["settings"])
    print(markdown)
    (folder / "README.md").write_text(readme(markdown, out))
    (folder / "report.html").write_text(html(markdown, png, out))
    print(f"wrote {folder} ({out['wall_seconds']:.0f} s wall)", flush=True)


def readme(markdown: str, out: dict) -> str:
    env, s = out["environment"], out["settings"]
    sweep_lines = []
    for method, rows in out["sweeps"].items():
        cells = ", ".join(f"{r['lr']}: {fmt(r['final_val_loss'])}"
                          + (f" ({r['error']})" if r["error"] else "") for r in rows)
        sweep_lines.append(f"- {NAMES[method]}: {cells} → {s['lr'][method]}")
    return f"""# Curvature optimizers on a character-level GPT-2

`{out['command']}`; {out['wall_seconds'] / 60:.1f} min wall; {env['cpu']}, torch {env['torch']},
transformers {env['transformers']}, {env['threads']} thread, load average at start
{', '.join(f'{x:.2f}' for x in env['load_average'])}, {env['date']}.

{s['model']}, {s['parameters']:,} parameters, vocabulary {s['vocab_size']}; batches of
{s['batch']} windows of {s['context']} characters; {s['budget_seconds']:.0f} CPU s of steps
per run (`time.process_time`, evaluations excluded), seeds {s['seeds']} (initialisation and
batch order); validation loss on {s['val_windows']} fixed windows of the last 10 %.
"Time to AdamW's final" is the median over seeds (a seed that never gets there counts as
never) of the CPU time at which a run's validation loss first reaches AdamW's median final
validation loss, over AdamW's median time to it;
"val loss at AdamW's tokens" interpolates each run's curve at AdamW's median token count
("not reached" if the run saw fewer tokens). Step cost: median CPU seconds of one step
(K-FAC with its inverse interval set to 10, the paper's is 20).

{markdown}

Learning-rate sweeps (seed 0, {s['sweep_budget_seconds']:.0f} CPU s, final validation loss):

{chr(10).join(sweep_lines) or '(none)'}

Shampoo took AdamW's swept lr (its graft gives each layer Adam's step length); K-FAC
(lr = 1, the published method) and stochastic HF (no learning rate) were not swept.
Settings of each method: `results.json` → `settings`. Figure: `curves.png`; all curves:
`results.json` → `runs`.

![curves](curves.png)
"""


def html(markdown: str, png: bytes, out: dict) -> str:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    head, body = cells[0], cells[2:]
    table = "<table border=1 cellpadding=4 style='border-collapse:collapse'><tr>" + "".join(
        f"<th>{h}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body) + "</table>"
    rest = "<br>".join(line for line in markdown.splitlines() if line and not line.startswith("|"))
    image = base64.b64encode(png).decode()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>transformer optimizers"
            f"</title></head><body><h1>Curvature optimizers on a character-level GPT-2</h1>"
            f"<p><code>{out['command']}</code>, {out['wall_seconds'] / 60:.1f} min wall, "
            f"{out['environment']['cpu']}, torch {out['environment']['torch']}</p>{table}"
            f"<p>{rest}</p><img src='data:image/png;base64,{image}' alt='curves'></body></html>")


if __name__ == "__main__":
    main()
