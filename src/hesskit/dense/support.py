"""Per-sample factor patterns that prove entries of H, G and R zero (``disjoint_support``).

Every per-sample term of H = Σ_n H_n (and of G and R) is a product of factors; where, on
every sample, one of an entry's factors is exactly 0, the entry is exactly 0 (a sum of
zeros, no cancellation). Two proofs of such factors:

* :class:`JointSupport` (:func:`joint_support`): in a chain of ``nn.Linear`` layers and
  piecewise-linear activations, the factors of every entry of every block;
* :class:`FirstLayerSupport` (:func:`first_layer_support`): for a first ``nn.Linear`` on
  ``[n, d]`` data in a proved chain of any elementwise activations (tanh, GELU, …), the
  factor x_n[a] x_n[b] of the first weight block.

Both need a loss that separates over samples (:func:`separates_over_samples`): otherwise
H is not a sum of per-sample terms. Neither is ever assumed: a model they cannot prove
gets None, and its zeros stay for the later classes (``unexplained``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.dense.evidence import leaf_owners
from hesskit.engine.layers import LINEAR, PIECEWISE_LINEAR_MODULES, elementwise_derivatives
from hesskit.engine.recorder import problem_chain
from hesskit.errors import UnsupportedArchitectureError
from hesskit.losses import AutodiffLoss, Loss
from hesskit.problem import Problem


def separates_over_samples(problem: Problem) -> bool:
    """The loss is one of hesskit's own (ℓ = c Σ_n ℓ_n(z_n, y_n), c a constant), not a user
    callable that might couple samples."""
    return isinstance(problem.loss, Loss) and not isinstance(problem.loss, AutodiffLoss)


SUPPORT_CHUNK = 4096
"""Samples per chunk when intersecting supports (bounds the ``[chunk, size]`` masks)."""


@dataclass
class JointSupport:
    """Per-sample zero patterns of the factors of H, G and R in a piecewise-linear chain.

    The model is a chain of ``nn.Linear`` layers l = 1 … L, each followed by zero or more
    elementwise piecewise-linear modules (σ″ = 0): a_l = W_l x_{l−1} + b_l, x_l = φ_l(a_l),
    output z = φ_L(a_L), with x_0 the data and φ_l the composition of the modules after
    layer l (the identity when there are none). Write s_l = φ_l′(a_l) (autodiff's value,
    0 at a ReLU kink) and u, v for the factors every per-sample term carries:

    * G = Σ_n J_nᵀ H_ℓ,n J_n (the loss separates over samples). The chain rule through
      the elementwise φ_l gives J_n[:, W_l[i, a]] = (∂z_n/∂x_l[i]) s_l,n[i] x_{l−1},n[a] and
      J_n[:, b_l[i]] = (∂z_n/∂x_l[i]) s_l,n[i]: so J_n's column p is exactly 0 when
      u_p,n = 0, where u = [s_l,n[i] ≠ 0]·[x_{l−1},n[a] ≠ 0] for W_l[i, a] and
      [s_l,n[i] ≠ 0] for b_l[i]. G[p, q] = 0 if u_p,n u_q,n = 0 for every sample n.
    * R = Σ_n Σ_k g_nk ∇²z_nk (g = ∂ℓ/∂z). Within a layer ∇²z = 0 (z is piecewise linear
      in one layer's parameters). For p in layer l and q in a later layer m:
      ∂z/∂W_m[j, b] = (∂z/∂a_m[j]) x_{m−1}[b], and ∂z/∂a_m[j] depends on θ_l only through
      φ′ of layers ≥ m, whose derivative σ″ is 0; so ∂²z/∂θ_p∂W_m[j, b] =
      (∂z/∂a_m[j]) s_{m−1}[b] ∂a_{m−1}[b]/∂θ_p, which carries s_m[j] (from ∂z/∂a_m[j]),
      s_{m−1}[b] and u_p (∂a_{m−1}[b]/∂θ_p carries s_l[i] x_{l−1}[a], or is δ_bi x_{l−1}[a]
      when m − 1 = l, where then s_{m−1}[b] = s_l[i]). The bias b_m has ∂z/∂b_m = ∂z/∂a_m,
      free of θ_l: its R terms with earlier layers vanish. With v_q,n =
      [s_m,n[j] ≠ 0]·[s_{m−1},n[b] ≠ 0] for W_m[j, b] (m ≥ 2) and v = 0 for biases,
      R[p, q] = 0 if u_p,n v_q,n = 0 for every n. Note x_{m−1}[b] itself is *not* a factor
      of R (it is differentiated away); for ReLU [x ≠ 0] = [s ≠ 0] anyway.
    * H = G + R summed per sample: H[p, q] = 0 when both per-sample terms vanish on every
      sample.

    Masks are boolean: ``inputs[l]`` = [x_{l−1} ≠ 0], ``[n, in_l]``; ``slopes[l]`` =
    [s_l ≠ 0], ``[n, out_l]``; ``layers`` maps each parameter to its layer's position l
    (0-based) and ``kinds`` to ``"weight"`` or ``"bias"``.
    """

    layers: dict[str, int]
    kinds: dict[str, str]
    inputs: list[Tensor]
    slopes: list[Tensor]

    def gradient_factors(self, name: str, samples: slice) -> Tensor:
        """u: ``[n, size(name)]``, False where J_n's column is exactly 0."""
        layer = self.layers[name]
        slope = self.slopes[layer][samples]
        if self.kinds[name] == "bias":
            return slope
        return (slope[:, :, None] & self.inputs[layer][samples][:, None, :]).flatten(1)

    def residual_factors(self, name: str, samples: slice) -> Tensor:
        """v: ``[n, size(name)]``, False where R's terms with earlier layers vanish."""
        layer = self.layers[name]
        slope = self.slopes[layer][samples]
        if self.kinds[name] == "bias" or layer == 0:
            return torch.zeros_like(self.gradient_factors(name, samples))
        previous = self.slopes[layer - 1][samples]
        return (slope[:, :, None] & previous[:, None, :]).flatten(1)

    def possible(self, part: str, rows: str, columns: str) -> Tensor:
        """``[size(rows), size(columns)]``: True where some sample's term may be non-zero."""
        layer_r, layer_c = self.layers[rows], self.layers[columns]
        total = len(self.slopes[0])
        result = None
        for start in range(0, total, SUPPORT_CHUNK):
            samples = slice(start, min(start + SUPPORT_CHUNK, total))
            u_r = self.gradient_factors(rows, samples).float()
            u_c = self.gradient_factors(columns, samples).float()
            terms = []
            if part in ("G", "H"):
                terms.append(u_r.T @ u_c)
            if part in ("R", "H") and layer_r > layer_c:
                terms.append(self.residual_factors(rows, samples).float().T @ u_c)
            if part in ("R", "H") and layer_r < layer_c:
                terms.append(u_r.T @ self.residual_factors(columns, samples).float())
            chunk = torch.zeros(u_r.shape[1], u_c.shape[1], dtype=torch.bool)
            for term in terms:  # sums of 0/1 products: > 0 iff some sample has both factors
                chunk |= term > 0
            result = chunk if result is None else result | chunk
        assert result is not None
        return result


def joint_support(problem: Problem, params: dict[str, Tensor]) -> JointSupport | None:
    """The per-sample factor patterns of :class:`JointSupport` from one forward pass.

    Only for a proven structure, else None: an ``nn.Sequential`` whose first module is an
    ``nn.Linear`` and whose other modules are ``nn.Linear``, ``nn.Identity`` or elementwise
    piecewise-linear activations, each used once; every Linear sees ``[n, features]``
    inputs; a hesskit loss that separates over samples (not a user callable); and each
    Linear's recorded input equal to φ of the previous Linear's recorded output (nothing
    else runs between them). s_l comes from autodiff of the modules themselves
    (:func:`~hesskit.engine.layers.elementwise_derivatives`), as the dense builders use.
    """
    owners = leaf_owners(problem)
    if owners is None or not separates_over_samples(problem):
        return None
    leaves, position = owners
    allowed = (nn.Linear, nn.Identity, *PIECEWISE_LINEAR_MODULES)
    if not leaves or not isinstance(leaves[0][1], nn.Linear):
        return None
    if any(not isinstance(m, allowed) or sum(m is o for _, o in leaves) > 1 for _, m in leaves):
        return None
    linears = [index for index, (_, module) in enumerate(leaves) if isinstance(module, nn.Linear)]
    after = [
        [leaves[k][1] for k in range(index + 1, stop)]
        for index, stop in zip(linears, [*linears[1:], len(leaves)], strict=True)
    ]
    seen: dict[int, tuple[list[Tensor], list[Tensor]]] = {k: ([], []) for k in linears}

    def recorder(index: int):
        def hook(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            seen[index][0].append(args[0].detach().clone())  # an in-place φ may follow
            seen[index][1].append(output.detach().clone())

        return hook

    handles = [leaves[k][1].register_forward_hook(recorder(k)) for k in linears]
    outputs = []
    try:
        with torch.no_grad():
            for batch in problem.batches():
                outputs.append(problem.output(params, batch.inputs))
    finally:
        for handle in handles:
            handle.remove()
    inputs, slopes, previous = [], [], None
    for index, modules in zip(linears, after, strict=True):
        ins, outs = seen[index]
        if not ins or any(x.ndim != 2 for x in ins):
            return None
        x, a = torch.cat(ins).cpu(), torch.cat(outs).cpu()
        if previous is not None and not torch.equal(previous, x):
            return None  # something else ran between two layers
        slope = torch.ones_like(a)
        value = a
        for module in modules:
            value, first, _ = elementwise_derivatives(module, value)
            slope = slope * first
        inputs.append(x != 0)
        slopes.append(slope != 0)
        previous = value
    if not all(isinstance(z, Tensor) for z in outputs) or not torch.equal(
        previous, torch.cat(outputs).cpu()
    ):
        return None  # the output is not φ_L(a_L)
    layers, kinds = {}, {}
    for name in problem.layout.names:
        index = position.get(name)
        if index not in linears:
            return None
        layers[name] = linears.index(index)
        kinds[name] = name.rsplit(".", 1)[1]
    return JointSupport(layers, kinds, inputs, slopes)


@dataclass(frozen=True)
class FirstLayerSupport:
    """Which input features are ever non-zero together: the first weight block's factors.

    Let the model be a proved chain (:func:`~hesskit.engine.recorder.record_chain`) whose
    first module is an ``nn.Linear`` applied once to the raw data x (``[n, d]``; nothing
    else reads x, the weight W₁ is used nowhere else), a₁ = W₁ x + b₁, and whose later
    modules (Linear, any elementwise activation, pass-through) act on each sample alone:
    z_n = g(θ′, a₁,n) with θ′ the other parameters. With ℓ = c Σ_n ℓ_n(z_n), the chain
    rule gives, for every sample n and any g,

        ∂z_n/∂W₁[i, a] = x_n[a] · ∂z_n/∂a₁[i],
        ∂²ℓ_n/∂W₁[i, a] ∂W₁[j, b] = x_n[a] x_n[b] · ∂²ℓ_n/∂a₁[i] ∂a₁[j],
        ∂²z_nk/∂W₁[i, a] ∂W₁[j, b] = x_n[a] x_n[b] · ∂²z_nk/∂a₁[i] ∂a₁[j],

    so the per-sample terms of H (the second line), G = Σ_n J_nᵀ H_ℓ,n J_n (the first, in
    both factors) and R = Σ_n Σ_k g_nk ∇²z_nk (the third) all carry x_n[a] x_n[b]: the
    entry (W₁[i, a], W₁[j, b]) of H, G and R is exactly 0 when x_n[a] x_n[b] = 0 for every
    n, whatever i, j and the activations. (W₁[i, a] with b₁[j] or any later parameter
    carries x_n[a] alone: zero only when feature a is 0 on every sample, the
    ``zero_input_feature`` class.) Per-sample independence is needed: a train-mode
    BatchNorm after W₁ mixes the samples, ∂z_n/∂W₁[i, a] then sums x_m[a] over m, and
    these entries are not zero; :func:`first_layer_support` proves it from the chain.

    ``weight`` names W₁, ``units`` is its number of rows and ``together[a, b]`` is True
    when some sample has x_n[a] ≠ 0 and x_n[b] ≠ 0 (``[d, d]``).
    """

    weight: str
    units: int
    together: Tensor

    def possible(self, part: str, rows: str, columns: str) -> Tensor | None:
        """``[size(rows), size(columns)]``: True where some sample's term may be non-zero,
        for the block (W₁, W₁) of any ``part``; None (no claim) for every other block.
        W₁ is flattened row-major, entry (i, a) at i·d + a, so the block tiles ``together``
        ``units`` × ``units`` times."""
        if rows != self.weight or columns != self.weight:
            return None
        return self.together.repeat(self.units, self.units)


def first_layer_support(problem: Problem, params: dict[str, Tensor]) -> FirstLayerSupport | None:
    """:class:`FirstLayerSupport` at ``params``, or None where its conditions are not proved.

    Proved per batch: the inputs are one ``[n, d]`` tensor; the model records as a chain
    (:func:`~hesskit.engine.recorder.problem_chain`: only Linear, elementwise and
    pass-through modules, each receiving exactly the previous one's output and each Linear
    called once, no operation outside the modules (no skip connection from x, no second
    use of x), no tied weights, no train-mode BatchNorm); its first call is an
    ``nn.Linear`` that receives the input tensor itself; its weight is one of the chosen
    parameters and the same module in every batch; and the loss separates over samples.
    Cost: one recorded forward pass per batch and a ``[d, d]`` count X₀ᵀ X₀ of the
    non-zero patterns.
    """
    if not separates_over_samples(problem):
        return None
    weight: str | None = None
    together: Tensor | None = None
    for batch in problem.batches():
        inputs = batch.inputs
        if not isinstance(inputs, Tensor) or inputs.ndim != 2:
            return None
        try:
            chain = problem_chain(problem, params, inputs)
        except UnsupportedArchitectureError:
            return None
        first = chain.steps[0]
        if first.kind != LINEAR or first.inputs is not inputs:
            return None
        name = chain.names[id(first.module)][0]
        if name not in problem.layout.names or weight not in (None, name):
            return None
        weight = name
        nonzero = (inputs != 0).to(torch.float64).cpu()
        counts = nonzero.T @ nonzero  # sums of 0/1 products: > 0 iff some sample has both
        together = counts > 0 if together is None else together | (counts > 0)
    if weight is None or together is None:
        return None
    units = problem.layout.shapes[problem.layout.names.index(weight)][0]
    return FirstLayerSupport(weight, units, together)
