"""Which layers K-FAC covers, found from the model's modules, and each use's factors.

A K-FAC block is one WEIGHT PARAMETER W, seen as a matrix V̄ = [M(W)  b] (``[out, in + 1]``)
on which the block acts as V̄ ↦ G V̄ A (``A``: the right factor, ``G``: the left one):

* ``nn.Linear`` (weight ``[out, in]``): M(W) = W; A from the inputs, G from the output
  gradients (Martens & Grosse 2015, §3);
* ``transformers``' ``Conv1D`` (GPT-2; weight ``[in, out]``, y = x W + b, a transposed
  Linear): M(W) = Wᵀ, the same factors (the block's ``transposed`` flag);
* ``nn.Embedding`` (weight ``[V, d]``, y = W[idx], i.e. y = Wᵀ e_idx): M(W) = W with the
  input factor on the LEFT: G-slot = diag(token counts)/(n R) (the one-hot inputs' second
  moment is diagonal), A-slot = Σ δ δᵀ of the output gradients (``[d, d]``); always the
  *expand* form below. An input whose batch dimension is 1 (positions broadcast over the
  batch) is counted once per sample; its output gradient is then the sum over samples,
  whose second moment equals the per-sample one in expectation under sampled targets;
* ``nn.Conv2d``: the KFC factors (:mod:`kfac_conv`), one use per block.

Inputs with extra dimensions ``[n, R..., in]`` (tokens, positions) follow Eschenhagen et
al., "Kronecker-Factored Approximate Curvature for Modern Neural Network Architectures"
(NeurIPS 2023), §3 (:class:`KFACApproximation`): *expand* treats the R positions as extra
samples, A = (1/(nR)) Σ_{i,r} ā ā ᵀ, G = Σ_{i,r} δ δᵀ (exact for a per-position loss on a
linear layer: their §3.1); *reduce* first averages the inputs and sums the gradients over R,
A = (1/n) Σ_i ā_i ā_iᵀ with ā_i = (1/R) Σ_r ā_{i,r}, G = Σ_i δ_i δ_iᵀ with δ_i = Σ_r δ_{i,r}
(exact when the R outputs are averaged before the loss: their §3.2). Both are the usual
factors for ``[n, in]`` inputs (R = 1).

TIED or reused weights (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``; a module
called twice): the contributions L_u ⊗ R_u of every use u are summed into one Kronecker
pair, each use first rescaled to equal mean eigenvalues, L_u ← L_u/s, R_u ← R_u·s with
s = √((tr L_u/dim L)/(tr R_u/dim R)) (leaving L_u ⊗ R_u unchanged; the trace norm of
Martens & Grosse §6.3), then L = Σ_u L_u, R = Σ_u R_u: the *expand* form over the uses
(Eschenhagen et al. §3.1), exact in L ⊗ R up to the cross terms L_u ⊗ R_v. A tied block has
no bias coordinate (its modules' biases are left to the optimizer's uncovered rule).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.errors import UnsupportedArchitectureError
from hesskit.operators.kfac_conv import ConvGeometry


class KFACApproximation(enum.Enum):
    """How a Linear layer's extra input dimensions enter its factors (module docstring)."""

    EXPAND = "expand"
    """Positions as samples (Eschenhagen et al. 2023, §3.1): exact per position."""

    REDUCE = "reduce"
    """Inputs averaged, gradients summed over positions (§3.2): exact for pooled outputs."""


class LayerKind(enum.Enum):
    """The module types K-FAC covers."""

    LINEAR = "Linear"
    CONV1D = "Conv1D (transformers, transposed Linear)"
    EMBEDDING = "Embedding"
    CONV2D = "Conv2d (KFC)"


@dataclass(frozen=True)
class LayerUse:
    """One module that uses a block's weight: its name and kind."""

    module: str
    kind: LayerKind


@dataclass(frozen=True)
class LinearBlock:
    """One weight K-FAC covers, as the matrix M(W) (module docstring).

    Attributes:
        module: the name of the module that owns the weight (the first use).
        weight: the name of its weight (canonical, as in ``named_parameters()``).
        bias: the name of its bias (the homogeneous coordinate), or None.
        in_features, out_features: the matrix M(W) is ``[out, in]``.
        conv: a Conv2d's geometry (None otherwise).
        transposed: M(W) = Wᵀ (``Conv1D``).
        uses: every module that uses the weight (more than one: tied weights).
    """

    module: str
    weight: str
    bias: str | None
    in_features: int
    out_features: int
    conv: ConvGeometry | None = None
    transposed: bool = False
    uses: tuple[LayerUse, ...] = ()

    @property
    def input_dim(self) -> int:
        """dim A: the input size plus one for the bias' homogeneous coordinate."""
        return self.in_features + (self.bias is not None)

    @property
    def kind(self) -> LayerKind:
        return self.uses[0].kind if self.uses else LayerKind.LINEAR


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of a module K-FAC covers, or None (Conv1D recognised by its class name and
    ``nf`` attribute, so that ``transformers`` is not imported)."""
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    if isinstance(module, nn.Embedding):  # a subclass with its own forward (BART's scaled
        # or positional embeddings) may not be y = W[input]: not covered
        return LayerKind.EMBEDDING if type(module).forward is nn.Embedding.forward else None
    if isinstance(module, nn.Conv2d):
        return LayerKind.CONV2D if ConvGeometry.of(module) is not None else None
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(
            module, "weight", None) is not None and module.weight.ndim == 2:
        return LayerKind.CONV1D
    return None


def kfac_blocks(model: nn.Module, names) -> list[LinearBlock]:
    """The blocks of ``model`` whose weight is among the parameters ``names``, in module
    order, each with all its uses (tied weights: several modules). A bias counts only when
    it is among ``names`` and its weight has one use. A weight that another module uses
    in a way K-FAC does not model (an ``nn.Embedding`` subclass with its own ``forward``,
    a grouped convolution) is not covered at all, rather than by a part of its uses."""
    wanted = set(names)
    canonical = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, list[tuple[str, nn.Module, LayerKind]]] = {}
    opaque = set()  # weights also used by a module K-FAC cannot model: left uncovered
    for module_name, module in model.named_modules(remove_duplicate=False):
        kind = layer_kind(module)
        if kind is None:
            weight = getattr(module, "weight", None)
            if isinstance(weight, Tensor):
                opaque.add(canonical.get(id(weight)))
            continue
        weight = canonical.get(id(module.weight))
        # one use per module object (a module registered under two names is hooked once;
        # its calls are each a use's contribution)
        if weight in wanted and all(m is not module for _, m, _ in found.get(weight, [])):
            found.setdefault(weight, []).append((module_name, module, kind))
    blocks = []
    for weight, uses in found.items():
        if weight in opaque:
            continue
        owner_name, owner, kind = uses[0]
        bias = canonical.get(id(getattr(owner, "bias", None))) if len(uses) == 1 else None
        bias = bias if bias in wanted else None
        W = owner.weight
        if kind is LayerKind.CONV1D:
            out_features, in_features = W.shape[1], W.shape[0]
        elif kind is LayerKind.EMBEDDING:
            out_features, in_features = W.shape[0], W.shape[1]
        else:
            out_features, in_features = W.shape[0], W[0].numel()
        blocks.append(LinearBlock(
            owner_name, weight, bias, in_features, out_features,
            ConvGeometry.of(owner) if kind is LayerKind.CONV2D else None,
            kind is LayerKind.CONV1D,
            tuple(LayerUse(m, k) for m, _, k in uses),
        ))
    return blocks


def _orientation(kind: LayerKind) -> bool:
    """Whether a use's natural (left, right) = (G, A) acts on Wᵀ rather than W."""
    return kind is LayerKind.CONV1D


def use_factors(
    block: LinearBlock, kind: LayerKind, inputs: Tensor, deltas: list[Tensor], n: int,
    approximation: KFACApproximation, work: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(right, left) = (A, G) of one call of one use, in the block's orientation.

    ``inputs``: the module's input (token ids for an Embedding); ``deltas``: the scaled
    output gradients of each backward pass (G = Σ_passes Σ δ δᵀ); ``n``: the batch size.
    """
    if kind is LayerKind.EMBEDDING:
        if inputs.is_floating_point() or inputs.is_complex():
            raise UnsupportedArchitectureError(
                f"K-FAC: embedding {block.module!r} got {inputs.dtype} inputs, not token ids; "
                "leave its weight out of the optimizer or the operator")
        ids = inputs.reshape(inputs.shape[0], -1)
        replicas = n // ids.shape[0] if ids.shape[0] < n else 1  # broadcast positions
        positions = ids.shape[1]
        counts = torch.bincount(ids.reshape(-1), minlength=block.out_features).to(work)
        left = torch.diag(counts * replicas / (n * positions))
        right = sum(d.reshape(-1, d.shape[-1]).T @ d.reshape(-1, d.shape[-1]) for d in deltas)
        return right, left  # type: ignore[return-value]
    a = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])  # [n, R, in]
    if block.bias is not None:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    flat = [d.reshape(d.shape[0], -1, d.shape[-1]) for d in deltas]  # [n, R, out]
    if approximation is KFACApproximation.REDUCE:
        a = a.mean(dim=1)
        A = a.T @ a / a.shape[0]
        G = sum(d.sum(dim=1).T @ d.sum(dim=1) for d in flat)
    else:
        rows = a.reshape(-1, a.shape[-1])
        A = rows.T @ rows / rows.shape[0]
        G = sum(d.reshape(-1, d.shape[-1]).T @ d.reshape(-1, d.shape[-1]) for d in flat)
    if _orientation(kind) != block.transposed:
        return G, A  # type: ignore[return-value]
    return A, G  # type: ignore[return-value]


def summed_uses(pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Σ_u of the (A_u, G_u) pairs of a block's uses, each rescaled to equal mean
    eigenvalues first (module docstring); one pair is returned as it is."""
    if len(pairs) == 1:
        return pairs[0]
    A_sum, G_sum = torch.zeros_like(pairs[0][0]), torch.zeros_like(pairs[0][1])
    for A, G in pairs:
        a = float(A.diagonal().mean())
        g = float(G.diagonal().mean())
        s = math.sqrt(g / a) if a > 0 and g > 0 and math.isfinite(a * g) else 1.0
        A_sum += A * s
        G_sum += G / s
    return A_sum, G_sum
