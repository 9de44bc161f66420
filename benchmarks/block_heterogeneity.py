"""Block heterogeneity of the Hessian: a small GPT-style transformer against a small CNN.

Zhang, Chen, Li, Sun, Ding & Luo, "Why Transformers Need Adam: A Hessian Perspective"
(NeurIPS 2024) find that the Hessian spectra of a transformer's parameter blocks differ
far more from one another than those of a CNN's, and measure it by the Jensen-Shannon
distance between the blocks' spectral densities. This benchmark measures the same with
``hesskit.estimators.block_spectra`` (Lanczos top eigenvalues and stochastic Lanczos
quadrature per diagonal block H_bb of the Hessian), at initialisation and after a short
training run, on one fixed batch per model.

Models (float32, seed 0):

* ``transformer``: ``transformers.GPT2LMHeadModel`` from ``GPT2Config(n_layer=2,
  n_embd=64, n_head=4, n_positions=64, dropout 0, eager attention)``, a character-level
  vocabulary (every character of the text), on ``shared/data/text/devils_dictionary.txt``
  (first 90 % the training text), loss ``hesskit.losses.CausalLMLoss()``. GPT-2 packs the
  query, key and value maps into one ``c_attn`` (``Conv1D`` 64 → 192); it is replaced by
  three ``Conv1D`` 64 → 64 (``c_attn.q``, ``.k``, ``.v``) holding the same weights and
  concatenated in the same order, so the function is unchanged and Q, K and V are blocks
  of their own. Blocks: each module's parameters (weight and bias together): ``wte``
  (tied with the LM head), ``wpe``, and per layer ``ln_1``, ``c_attn.q/k/v``,
  ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, then ``ln_f``: 19 blocks.
* ``cnn``: Conv2d 1→8 (3×3, pad 1), ReLU, Conv2d 8→16 (3×3, pad 1), ReLU, MaxPool 2,
  Conv2d 16→16 (3×3, pad 1), ReLU, MaxPool 2, Linear(16·7·7 → 32), ReLU, Linear(32 → 10)
  on MNIST (hesskit's loader, ``shared/data/mnist``), cross-entropy. Blocks: each conv and
  linear layer (weight and bias together): 5 blocks.

Training: 200 AdamW steps for both (transformer lr 3e-3, 32 windows of 64 characters;
CNN lr 1e-3, 64 images), the losses recorded. Hessian batch (fixed, never trained on
specially): 16 training windows of 64 characters (1008 predicted tokens) / 256 training
images. Per block: the top 2 eigenvalues (Lanczos, tol 1e-3) and the SLQ density
(2 Rademacher probes × 40 steps, hesskit's defaults otherwise).

Heterogeneity, per model and time point:

* ``js_shared``: every block's SLQ density smoothed with ONE Gaussian width (1 % of the
  range of all blocks' nodes, as ``hesskit spectrum --per-block`` does) on one shared grid
  of 1000 points over all blocks' nodes ± 5σ, each normalised to sum 1 on the grid;
  pairwise Jensen-Shannon distances (base 2, so in [0, 1]); their mean and max.
  Differences of scale between blocks count here.
* ``js_scaled``: the same after dividing each block's nodes by the block's largest
  |node| (its spectral radius estimate), on the grid [-1.05, 1.05] with σ = 0.01: only
  the shapes of the spectra count (Zhang et al. plot spectra scaled by a top eigenvalue).
* ``js_symlog``: the same on the eigenvalues mapped by t = sign(λ) log10(1 + |λ|/ε),
  ε = 1e-4 × the largest |node| of all the model's blocks, one σ (1 % of the mapped range)
  on one shared grid: scale differences count, but blocks four decades apart are still
  resolved (on the linear grid of ``js_shared`` every block far below the largest one
  collapses onto the same Gaussian at 0).
* ``top_ratio``: the largest over the smallest block top eigenvalue (the algebraically
  largest, from Lanczos), and the standard deviation of their log10; ``radius_ratio``:
  the same for each block's largest |SLQ node| (its spectral radius estimate, which a
  large negative eigenvalue can set).

Run:  OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/block_heterogeneity.py
      [--quick] [--out DIR]
Writes results.json, block_heterogeneity.png and README.md to
benchmarks/results/block_heterogeneity/ (``--quick``: a smoke run, to /tmp by default).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon
from torch import nn

from hesskit import Problem
from hesskit.data import load_mnist
from hesskit.estimators import block_spectra, density_on_grid, module_blocks
from hesskit.estimators.spectral_density import SpectralQuadrature, width_for_range
from hesskit.losses import CausalLMLoss
from hesskit.operators import hessian_operator

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEXT = SHARED / "text" / "devils_dictionary.txt"
RESULTS = ROOT / "benchmarks" / "results" / "block_heterogeneity"
GRID_POINTS = 1000
SCALED_WIDTH = 0.01
SYMLOG_DECADES = 1e-4
DISCUSSION = "## Comparison with Zhang et al."
FULL = {"layers": 2, "width": 64, "tokens": 64, "steps": 200, "lm_batch": 32,
        "hessian_sequences": 16, "cnn_batch": 64, "hessian_images": 256, "k": 2,
        "probes": 2, "density_steps": 40, "tol": 1e-3}
QUICK = {**FULL, "steps": 10, "hessian_sequences": 4, "hessian_images": 64, "k": 1,
         "probes": 1, "density_steps": 12, "tol": 1e-2}


# ----------------------------------------------------------------------------- models
class SplitQKV(nn.Module):
    """GPT-2's packed ``c_attn`` (x → [q | k | v]) as three ``Conv1D`` of its own."""

    def __init__(self, packed: nn.Module) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        width = packed.weight.shape[0]
        for i, name in enumerate("qkv"):
            part = Conv1D(width, width)
            with torch.no_grad():
                part.weight.copy_(packed.weight[:, i * width:(i + 1) * width])
                part.bias.copy_(packed.bias[i * width:(i + 1) * width])
            self.add_module(name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def build_transformer(vocab: int, cfg: dict) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=cfg["tokens"], n_embd=cfg["width"],
                        n_layer=cfg["layers"], n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"  # torch's fused attention has no double backward
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(config)
    for layer in lm.transformer.h:
        packed = layer.attn.c_attn
        split = SplitQKV(packed)
        ids = torch.randint(0, vocab, (2, 8))
        x = lm.transformer.wte(ids)
        assert torch.equal(split(x), packed(x)), "the split c_attn differs from the packed one"
        layer.attn.c_attn = split
    return lm.eval()


def build_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10),
    ).eval()


CNN_NAMES = {"1": "conv1", "3": "conv2", "6": "conv3", "10": "fc1", "12": "fc2"}


# ----------------------------------------------------------------------------- data
def text_data(tokens: int):
    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    train = ids[: int(0.9 * len(ids))]
    return train, len(chars)


def windows(train: torch.Tensor, count: int, tokens: int, generator: torch.Generator):
    starts = torch.randint(0, len(train) - tokens, (count,), generator=generator)
    return torch.stack([train[s:s + tokens] for s in starts.tolist()])


# ----------------------------------------------------------------------------- training
def train_transformer(model, train, cfg) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    loss_fn = CausalLMLoss()
    losses = []
    model.train()
    for _ in range(cfg["steps"]):
        ids = windows(train, cfg["lm_batch"], cfg["tokens"], generator)
        loss = loss_fn(model(input_ids=ids).logits, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def train_cnn(model, x, y, cfg) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    losses = []
    model.train()
    for _ in range(cfg["steps"]):
        rows = torch.randint(0, len(x), (cfg["cnn_batch"],), generator=generator)
        loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ----------------------------------------------------------------------------- spectra
def measure(problem: Problem, blocks: dict[str, list[str]], cfg: dict) -> dict:
    """Per block: top eigenvalues, SLQ nodes/weights, products, CPU seconds."""
    op = hessian_operator(problem)
    out = {}
    for name, names in blocks.items():
        start = time.process_time()
        spectrum = block_spectra(op, {name: names}, k=cfg["k"], tol=cfg["tol"],
                                 density_probes=cfg["probes"],
                                 density_steps=cfg["density_steps"], seed=0,
                                 progress=False)[name]
        seconds = time.process_time() - start
        pairs, density = spectrum.eigenpairs, spectrum.density
        out[name] = {
            "names": list(names), "num_params": spectrum.num_params,
            "top": pairs.values.tolist(), "residuals": pairs.residuals.tolist(),
            "converged": bool(pairs.converged),
            "products": pairs.products + density.products,
            "nodes": density.nodes.tolist(), "weights": density.weights.tolist(),
            "cpu_s": seconds,
        }
        print(f"    {name:<28} {spectrum.num_params:>7,} params  top {pairs.values[0]: .4e}"
              f"  {'' if pairs.converged else 'NOT converged  '}{seconds:6.1f} s CPU",
              flush=True)
    return out


def quadrature(record: dict, scale: float = 1.0) -> SpectralQuadrature:
    nodes = torch.tensor(record["nodes"], dtype=torch.float64) / scale
    weights = torch.tensor(record["weights"], dtype=torch.float64)
    return SpectralQuadrature(nodes=nodes, weights=weights, products=0, size=record["num_params"])


def used_nodes(record: dict) -> np.ndarray:
    nodes, weights = np.asarray(record["nodes"]), np.asarray(record["weights"])
    return nodes[weights > 0]


def shared_densities(spectra: dict) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Every block on one grid with one σ (raw eigenvalues)."""
    nodes = np.concatenate([used_nodes(r) for r in spectra.values()])
    low, high = float(nodes.min()), float(nodes.max())
    width = width_for_range(low, high)
    grid = torch.linspace(low - 5 * width, high + 5 * width, GRID_POINTS, dtype=torch.float64)
    curves = {b: density_on_grid(quadrature(r), width=width, grid=grid)[1].numpy()
              for b, r in spectra.items()}
    return grid.numpy(), curves, width


def scaled_densities(spectra: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each block's nodes divided by its largest |node|, on [-1.05, 1.05]."""
    grid = torch.linspace(-1.05, 1.05, GRID_POINTS, dtype=torch.float64)
    curves = {}
    for block, record in spectra.items():
        radius = float(np.abs(used_nodes(record)).max())
        curves[block] = density_on_grid(quadrature(record, radius), width=SCALED_WIDTH,
                                        grid=grid)[1].numpy()
    return grid.numpy(), curves


def symlog_densities(spectra: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every block's nodes mapped by t = sign(λ) log10(1 + |λ| / ε), ε = 1e-4 · the largest
    |node| of all blocks, then smoothed on one shared grid with one σ (1 % of the range):
    the density of the mapped eigenvalues, resolving scales four decades apart."""
    radius = max(float(np.abs(used_nodes(r)).max()) for r in spectra.values())
    epsilon = SYMLOG_DECADES * radius

    def mapped(record: dict) -> dict:
        nodes = np.asarray(record["nodes"])
        return {**record, "nodes": (np.sign(nodes) * np.log10(1 + np.abs(nodes) / epsilon))
                .tolist()}

    grid, curves, _ = shared_densities({b: mapped(r) for b, r in spectra.items()})
    return grid, curves


def js_summary(curves: dict[str, np.ndarray]) -> dict:
    names = list(curves)
    probs = {}
    for block, curve in curves.items():  # denormals would make (p + q) / 2 underflow to 0
        curve = np.where(curve > 1e-250 * curve.max(), curve, 0.0)
        probs[block] = curve / curve.sum()
    matrix = np.zeros((len(names), len(names)))
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        matrix[i, j] = matrix[j, i] = jensenshannon(probs[a], probs[b], base=2)
    pairs = matrix[np.triu_indices(len(names), 1)]
    return {"mean": float(pairs.mean()), "max": float(pairs.max()),
            "median": float(np.median(pairs)), "blocks": names, "matrix": matrix.tolist()}


def heterogeneity(spectra: dict) -> dict:
    tops = np.array([r["top"][0] for r in spectra.values()])
    _, shared, width = shared_densities(spectra)
    _, scaled = scaled_densities(spectra)
    _, symlog = symlog_densities(spectra)
    radii = np.array([np.abs(used_nodes(r)).max() for r in spectra.values()])
    return {
        "js_shared": {**js_summary(shared), "width": width},
        "js_scaled": js_summary(scaled),
        "js_symlog": js_summary(symlog),
        "top_max": float(tops.max()), "top_min": float(tops.min()),
        "top_ratio": float(tops.max() / tops.min()) if tops.min() > 0 else None,
        "top_log10_std": float(np.log10(np.abs(tops)).std()),
        "radius_ratio": float(radii.max() / radii.min()),
    }


# ----------------------------------------------------------------------------- runs
def stage_record(problem: Problem, loss: float, blocks: dict, cfg: dict) -> dict:
    """One stage's (initialisation or trained) spectra, their CPU time and heterogeneity."""
    start = time.process_time()
    spectra = measure(problem, blocks, cfg)
    return {"batch_loss": loss, "spectra": spectra, "cpu_s": time.process_time() - start,
            "heterogeneity": heterogeneity(spectra)}


def run_transformer(cfg: dict) -> dict:
    train, vocab = text_data(cfg["tokens"])
    model = build_transformer(vocab, cfg)
    ids = windows(train, cfg["hessian_sequences"], cfg["tokens"],
                  torch.Generator().manual_seed(0))
    blocks = module_blocks([n for n, _ in model.named_parameters()])
    record = {"vocab": vocab, "num_params": sum(p.numel() for p in model.parameters()),
              "train_characters": len(train), "hessian_tokens": int(ids.numel()),
              "blocks": {b: v for b, v in blocks.items()}}
    loss_fn = CausalLMLoss()

    def stage(label: str) -> None:
        with torch.no_grad():
            loss = float(loss_fn(model(input_ids=ids).logits, ids))
        print(f"  transformer {label}: loss on the Hessian batch {loss:.4f}", flush=True)
        problem = Problem(model, CausalLMLoss(), ({"input_ids": ids}, ids))
        record[label] = stage_record(problem, loss, blocks, cfg)

    stage("init")
    start = time.process_time()
    losses = train_transformer(model, train, cfg)
    record["training"] = {"optimizer": "AdamW(lr=3e-3, weight_decay=0.01)",
                          "steps": cfg["steps"], "batch": [cfg["lm_batch"], cfg["tokens"]],
                          "losses": losses, "cpu_s": time.process_time() - start}
    print(f"  transformer trained: loss {losses[0]:.3f} → {np.mean(losses[-10:]):.3f}",
          flush=True)
    stage("trained")
    return record


def run_cnn(cfg: dict) -> dict:
    data = load_mnist(SHARED)
    x, y = data.train_x, data.train_y
    model = build_cnn()
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    rows = rows[: cfg["hessian_images"]]
    hx, hy = x[rows], y[rows]
    names = [n for n, _ in model.named_parameters()]
    blocks = {CNN_NAMES[k]: v for k, v in module_blocks(names).items()}
    record = {"num_params": sum(p.numel() for p in model.parameters()),
              "hessian_images": len(hx), "blocks": blocks}

    def stage(label: str) -> None:
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(model(hx), hy))
        print(f"  cnn {label}: loss on the Hessian batch {loss:.4f}", flush=True)
        problem = Problem(model, nn.CrossEntropyLoss(), (hx, hy))
        record[label] = stage_record(problem, loss, blocks, cfg)

    stage("init")
    start = time.process_time()
    losses = train_cnn(model, x, y, cfg)
    record["training"] = {"optimizer": "AdamW(lr=1e-3, weight_decay=0.01)",
                          "steps": cfg["steps"], "batch": cfg["cnn_batch"], "losses": losses,
                          "cpu_s": time.process_time() - start}
    print(f"  cnn trained: loss {losses[0]:.3f} → {np.mean(losses[-10:]):.3f}", flush=True)
    stage("trained")
    return record


# ----------------------------------------------------------------------------- output
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("init", "shared"), ("trained", "shared"), ("init", "scaled")]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    colors = plt.get_cmap("tab20")
    for row, model in enumerate(("transformer", "cnn")):
        for col, (stage, kind) in enumerate(columns):
            ax = axes[row, col]
            spectra = results[model][stage]["spectra"]
            if kind == "shared":
                grid, curves, _ = shared_densities(spectra)
                xlabel = "eigenvalue of the block Hessian"
            else:
                grid, curves = scaled_densities(spectra)
                xlabel = "eigenvalue / block's largest |eigenvalue|"
            het = results[model][stage]["heterogeneity"][f"js_{kind}"]
            for i, (block, curve) in enumerate(curves.items()):
                floor = curve.max() * 1e-8
                ax.semilogy(grid, np.maximum(curve, floor), color=colors(i % 20), lw=1,
                            label=block.removeprefix("transformer."))
            ax.set_ylim(bottom=max(min(c.max() for c in curves.values()) * 1e-6, 1e-12))
            ax.set_title(f"{model}, {stage}: JS {kind} mean {het['mean']:.3f}, "
                         f"max {het['max']:.3f}",
                         fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("density (SLQ, smoothed, log)")
            if col == 2:
                ax.legend(fontsize=6, ncol=2 if model == "transformer" else 1,
                          loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Per-block Hessian spectral densities (hesskit block_spectra): "
                 "GPT-2-style char transformer vs CNN on MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(model: str, record: dict) -> list[str]:
    lines = ["| block | params | top λ at init | top λ trained | products (init) | "
             "CPU s (init) |",
             "|---|---:|---:|---:|---:|---:|"]
    init, trained = record["init"]["spectra"], record["trained"]["spectra"]
    for block, r in init.items():
        t = trained[block]
        flag = "" if r["converged"] and t["converged"] else " (not converged)"
        lines.append(f"| {block.removeprefix('transformer.')} | {r['num_params']:,} | "
                     f"{r['top'][0]:.3e} | {t['top'][0]:.3e}{flag} | {r['products']} | "
                     f"{r['cpu_s']:.1f} |")
    return lines


def _summary_rows(results: dict) -> list[str]:
    lines = ["| model | stage | loss (Hessian batch) | JS shared mean | JS shared max | "
             "JS scaled mean | JS scaled max | JS symlog mean | JS symlog max | top λ max/min | "
             "std log10 top λ | max/min radius |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in ("transformer", "cnn"):
        for stage in ("init", "trained"):
            r = results[model][stage]
            h = r["heterogeneity"]
            ratio = "n/a" if h["top_ratio"] is None else f"{h['top_ratio']:.3g}"
            lines.append(f"| {model} | {stage} | {r['batch_loss']:.3f} | "
                         f"{h['js_shared']['mean']:.3f} | {h['js_shared']['max']:.3f} | "
                         f"{h['js_scaled']['mean']:.3f} | {h['js_scaled']['max']:.3f} | "
                         f"{h['js_symlog']['mean']:.3f} | {h['js_symlog']['max']:.3f} | "
                         f"{ratio} | {h['top_log10_std']:.2f} | {h['radius_ratio']:.3g} |")
    return lines


def write_readme(results: dict, path: Path) -> None:
    env, cfg = results["environment"], results["config"]
    t, c = results["transformer"], results["cnn"]
    lines = [
        "# Block heterogeneity of the Hessian: transformer vs CNN",
        "",
        "Zhang et al., *Why Transformers Need Adam: A Hessian Perspective* (NeurIPS 2024), "
        "reproduced at toy scale with `hesskit.estimators.block_spectra` "
        "(`benchmarks/block_heterogeneity.py`; its docstring has every setting).",
        "",
        "## Command",
        "",
        "```",
        "OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 19 .venv/bin/python "
        "benchmarks/block_heterogeneity.py",
        "# measures, figure and README again from results.json (no new spectra):",
        "PYTHONPATH=src .venv/bin/python benchmarks/block_heterogeneity.py --from-json",
        "```",
        "",
        "A smoke run: `--quick` (writes to /tmp/block_heterogeneity_quick; about 30 s CPU).",
        "",
        "## Environment",
        "",
        f"- torch {env['torch']}, transformers {env['transformers']}, Python "
        f"{env['python']}, {env['machine']}",
        f"- threads: torch {env['torch_threads']}, OMP_NUM_THREADS="
        f"{env['OMP_NUM_THREADS']}; {env['cpus']} CPUs, load average (1, 5, 15 min) "
        f"{_load(env['load_start'])} at the start, {_load(env['load_end'])} at the end "
        "(run under `nice -n 19` on a shared machine)",
        f"- wall time {results['wall_s']:.0f} s, CPU time {results['cpu_s']:.0f} s (the "
        "process got a small share of a loaded core: CPU time is the cost measure; the "
        "per-block CPU seconds below are `time.process_time()`)",
        f"- settings: {json.dumps(cfg)}",
        "",
        "## Summary",
        "",
        *_summary_rows(results),
        "",
        f"Transformer: {t['num_params']:,} parameters, vocabulary {t['vocab']} characters, "
        f"Hessian batch {t['hessian_tokens']} tokens "
        f"({t['hessian_tokens'] - t['hessian_tokens'] // cfg['tokens']} predicted); "
        "training loss "
        f"{t['training']['losses'][0]:.3f} → {np.mean(t['training']['losses'][-10:]):.3f} "
        f"(mean of the last 10 of {t['training']['steps']} steps).",
        f"CNN: {c['num_params']:,} parameters, Hessian batch {c['hessian_images']} images; "
        f"training loss {c['training']['losses'][0]:.3f} → "
        f"{np.mean(c['training']['losses'][-10:]):.3f}.",
        "",
        "![per-block densities](block_heterogeneity.png)",
        "",
        "## Transformer blocks",
        "",
        *_table("transformer", t),
        "",
        "## CNN blocks",
        "",
        *_table("cnn", c),
        "",
    ]
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = old[old.index(DISCUSSION):] if DISCUSSION in old else ""  # written by hand
    path.write_text("\n".join(lines) + "\n" + kept, encoding="utf-8")


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def environment() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.processor() or
            platform.machine(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
            "load_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (minutes)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--from-json", action="store_true",
                        help="recompute the measures, figure and README from OUT/results.json")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    out = args.out or (Path("/tmp/block_heterogeneity_quick") if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        for model in ("transformer", "cnn"):
            for stage in ("init", "trained"):
                record = results[model][stage]
                record["heterogeneity"] = heterogeneity(record["spectra"])
        finish(results, out)
        return
    torch.set_num_threads(1)
    env = environment()
    wall, cpu = time.perf_counter(), time.process_time()
    results = {"config": cfg, "environment": env}
    print("transformer", flush=True)
    results["transformer"] = run_transformer(cfg)
    print("cnn", flush=True)
    results["cnn"] = run_cnn(cfg)
    results["wall_s"] = time.perf_counter() - wall
    results["cpu_s"] = time.process_time() - cpu
    env["load_end"] = os.getloadavg()
    finish(results, out)


def finish(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results) + "\n", encoding="utf-8")
    plot(results, out / "block_heterogeneity.png")
    write_readme(results, out / "README.md")
    print("\n".join(_summary_rows(results)))
    print(f"wall {results['wall_s']:.0f} s, CPU {results['cpu_s']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
