"""Exact curvature diagonals of a chain of layers by backpropagating per-sample curvature.

For a network that is a chain x_0 = X → x_1 = m_1(x_0) → … → z = x_L of supported layers
(``Linear``, elementwise activations, ``Flatten``, ``Identity``, ``Dropout`` in eval mode),
the per-sample Hessian of ℓ_i w.r.t. each layer output, Q_l,i = ∂²ℓ_i/∂x_l,i², obeys
(BackPACK's DiagHessian; Dangel, Kunstner & Hennig, ICLR 2020, §3):

    Q_L,i = S_i S_iᵀ                               (``Loss.hessian_sqrt``, reduction c included)
    Linear  x_l = W x_{l−1} + b:     Q_{l−1} = Wᵀ Q_l W,   g_{l−1} = Wᵀ g_l
    σ       x_l = σ(x_{l−1}):        Q_{l−1} = D Q_l D + diag(σ″(x_{l−1}) ⊙ g_l),  D = diag σ′
                                     g_{l−1} = σ′ ⊙ g_l

with g_l = ∂ℓ/∂x_l (per sample). A weight enters only one layer, linearly, so

    ∂²ℓ/∂W[p, q]² = Σ_i Q_l,i[p, p] x_{l−1,i,q}²,      ∂²ℓ/∂b[p]² = Σ_i Q_l,i[p, p].

Dropping the σ″ terms gives the Gauss-Newton diagonal; replacing Q by δ_i δ_iᵀ with
δ_i = ∂ℓ_i/∂x_l,i (unscaled per-sample gradient) gives the empirical-Fisher diagonal.

Q is kept factorised, Q_i = F_i diag(s_i) F_iᵀ with F_i ``[d, m]`` and signs s_i = ±1 (the
σ″ ⊙ g residual enters as the signed square-root columns √|r| with sign(r)). Before a
linear layer, a factor with m ≥ 2d columns is multiplied out to a dense ``[n, d, d]``
matrix, so that the columns do not pile up over many layers; the first layer with
parameters needs only diag(Q), which the factor gives in n d m operations. For a
ReLU network there is no residual and m is the output dimension k: the cost is about k
backward passes, one matrix product per layer for the diagonal, and no propagation past the
first layer with parameters.

A model qualifies when a forward pass, recorded with hooks on its leaf modules, is such a
chain: it need not be an ``nn.Sequential``. Anything else (residual connections, functional
operations between modules, unsupported layers, a layer used twice) raises
:class:`~hesskit.errors.UnsupportedArchitectureError` (also importable from this module),
which the front door turns into a fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.activations import Activation, get_activation
from hesskit.errors import UnsupportedArchitectureError
from hesskit.losses import Loss

PASSTHROUGH = (nn.Identity, nn.Flatten, nn.Dropout)
KINDS = ("hessian", "ggn", "ef")


@dataclass
class Step:
    """One recorded module call: the module and its input (the pre-activation for σ)."""

    module: nn.Module
    inputs: Tensor


def activation_of(module: nn.Module) -> Activation | None:
    """The closed-form σ of an activation module, or None for other modules."""
    kind = type(module)
    if kind in (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.SiLU):
        return get_activation(kind.__name__.lower())
    if kind is nn.LeakyReLU:
        return get_activation("leaky_relu", slope=module.negative_slope)
    if kind is nn.ELU:
        return get_activation("elu", alpha=module.alpha)
    if kind is nn.Softplus and module.beta == 1:
        return get_activation("softplus")
    if kind is nn.GELU and module.approximate == "none":
        return get_activation("gelu")
    return None


def record_chain(model: nn.Module, inputs: Tensor) -> tuple[list[Step], Tensor]:
    """Run ``model(inputs)`` with hooks and return its layer chain and its output.

    Raises:
        UnsupportedArchitectureError: the forward pass is not a chain of supported layers.
    """
    for name, module in model.named_modules():
        has_own = any(True for _ in module.parameters(recurse=False))
        if has_own and type(module) is not nn.Linear:
            raise _unsupported(f"module {name or 'model'!r} ({type(module).__name__}) holds "
                               "parameters but is not an nn.Linear")
    calls: list[tuple[nn.Module, Tensor, Tensor, Tensor]] = []
    pending: dict[int, tuple[Tensor, Tensor]] = {}

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
            raise _unsupported(f"{type(module).__name__} is called with other than one tensor")
        value = args[0].clone() if getattr(module, "inplace", False) else args[0]
        pending[id(module)] = (args[0], value)

    def after(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        given, value = pending.pop(id(module))
        calls.append((module, given, value, output))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_pre_hook(before, with_kwargs=True) for m in leaves]
    handles += [m.register_forward_hook(after, with_kwargs=True) for m in leaves]
    try:
        with torch.no_grad():
            output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return _check_chain(calls, inputs, output), output


def _check_chain(calls: list, inputs: Tensor, output: object) -> list[Step]:
    if not calls:
        raise _unsupported("the forward pass calls no modules")
    steps, previous, seen = [], inputs, set()
    for module, given, value, result in calls:
        name = type(module).__name__
        if given is not previous:
            raise _unsupported(f"the input of {name} is not the output of the layer before it "
                               "(a residual connection or a functional operation in forward)")
        _check_layer(module, value)
        if type(module) is nn.Linear:
            if id(module) in seen:
                raise _unsupported(f"the layer {module} is used twice (shared weights)")
            seen.add(id(module))
        steps.append(Step(module, value))
        previous = result
    if output is not previous:
        raise _unsupported("the model's output is not the output of its last layer")
    return steps


def _check_layer(module: nn.Module, value: Tensor) -> None:
    name = type(module).__name__
    if type(module) is nn.Linear:
        if value.ndim != 2:
            raise _unsupported(f"an nn.Linear receives a {value.ndim}-d input; only [n, d]")
    elif type(module) is nn.Flatten:
        if module.start_dim == 0 or module.start_dim < -value.ndim + 1:
            raise _unsupported("nn.Flatten merges the sample dimension; use start_dim=1")
    elif type(module) is nn.Dropout:
        if module.training and module.p > 0:
            raise _unsupported("nn.Dropout is active; call model.eval() first")
    elif type(module) not in PASSTHROUGH and activation_of(module) is None:
        raise _unsupported(f"layer {name} is not supported")


def _unsupported(reason: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"no exact diagonal for this model: {reason}; use a Hutchinson estimate instead"
    )


class OutputCurvature:
    """Per-sample Q_i = F_i diag(s_i) F_iᵀ (``factor`` [n, d, m], ``signs`` [n, m] or None),
    or dense ``[n, d, d]`` once that is cheaper."""

    def __init__(self, factor: Tensor) -> None:
        self.factor: Tensor | None = factor
        self.signs: Tensor | None = None
        self.dense: Tensor | None = None

    def diagonal(self) -> Tensor:
        """diag(Q_i) for every sample, ``[n, d]``."""
        if self.dense is not None:
            return self.dense.diagonal(dim1=1, dim2=2)
        squares = self.factor**2
        if self.signs is not None:
            squares = squares * self.signs[:, None, :]
        return squares.sum(-1)

    def through_linear(self, weight: Tensor) -> None:
        """Q ← Wᵀ Q W (first made dense if the factor has at least 2 d columns)."""
        if self.dense is None and self.factor.shape[-1] >= 2 * self.factor.shape[1]:
            self.dense = self.factor @ self._signed(self.factor).transpose(1, 2)
            self.factor = self.signs = None
        if self.dense is not None:
            self.dense = weight.T @ self.dense @ weight
        else:
            self.factor = torch.einsum("oi,nom->nim", weight, self.factor)

    def through_activation(self, first: Tensor, residual: Tensor | None) -> None:
        """Q ← D Q D + diag(residual), D = diag(first)."""
        if self.dense is not None:
            self.dense = first[:, :, None] * self.dense * first[:, None, :]
        else:
            self.factor = first[:, :, None] * self.factor
        if residual is None or not bool(residual.any()):
            return
        n = residual.shape[0]
        if self.dense is not None:
            self.dense = self.dense + torch.diag_embed(residual)
            return
        signs = torch.ones(n, self.factor.shape[-1], dtype=residual.dtype, device=residual.device)
        signs = signs if self.signs is None else self.signs
        self.factor = torch.cat([self.factor, torch.diag_embed(residual.abs().sqrt())], dim=-1)
        self.signs = torch.cat([signs, torch.sign(residual)], dim=-1)

    def _signed(self, factor: Tensor) -> Tensor:
        return factor if self.signs is None else factor * self.signs[:, None, :]


def chain_diagonal(
    steps: list[Step],
    output: Tensor,
    targets: Tensor,
    loss: Loss,
    names: dict[int, str],
    kind: str,
) -> dict[str, Tensor]:
    """The diagonal of one batch's (unweighted) curvature matrix, per parameter.

    Args:
        steps: the chain from :func:`record_chain`.
        output: the model output z for the batch.
        targets: the batch targets y.
        loss: the loss ℓ (its reduction factor c is included).
        names: parameter name by ``id`` of the parameter tensor, for the parameters wanted.
        kind: ``"hessian"``, ``"ggn"`` or ``"ef"``.

    Returns:
        ``{name: diagonal shaped like the parameter}`` for the parameters in ``names``
        that the chain uses (others are left out: their diagonal is zero).
    """
    z = output.detach().reshape(output.shape[0], -1).requires_grad_(True)
    with torch.enable_grad():
        value = loss.value(z.reshape(output.shape), targets)
        (gradient,) = torch.autograd.grad(value, z)
    scale = loss.scale(output)
    if kind == "ef":  # Q_i = c δ_i δ_iᵀ with δ_i = g_i / c, the unscaled per-sample gradient
        curvature = OutputCurvature((gradient / scale**0.5)[:, :, None])
    else:
        curvature = OutputCurvature(loss.hessian_sqrt(output.detach(), targets))
    wanted = [i for i, s in enumerate(steps) if _owned(s.module, names)]
    diagonals: dict[str, Tensor] = {}
    with torch.no_grad():
        for index in range(len(steps) - 1, (wanted[0] if wanted else len(steps)) - 1, -1):
            step = steps[index]
            inputs = step.inputs.reshape(step.inputs.shape[0], -1)
            if type(step.module) is nn.Linear:
                _linear_diagonals(step.module, inputs, curvature, names, diagonals)
                if index > wanted[0]:
                    curvature.through_linear(step.module.weight.detach())
                    gradient = gradient @ step.module.weight.detach()
            elif (sigma := activation_of(step.module)) is not None:
                first = sigma.first(inputs)
                residual = None
                if kind == "hessian" and not sigma.piecewise_linear:
                    residual = sigma.second(inputs) * gradient
                curvature.through_activation(first, residual)
                gradient = gradient * first
    return diagonals


def _owned(module: nn.Module, names: dict[int, str]) -> bool:
    return any(id(p) in names for p in module.parameters(recurse=False))


def _linear_diagonals(
    layer: nn.Linear,
    inputs: Tensor,
    curvature: OutputCurvature,
    names: dict[int, str],
    out: dict[str, Tensor],
) -> None:
    if not _owned(layer, names):
        return
    diag_q = curvature.diagonal()
    if id(layer.weight) in names:
        out[names[id(layer.weight)]] = diag_q.T @ inputs**2
    if layer.bias is not None and id(layer.bias) in names:
        out[names[id(layer.bias)]] = diag_q.sum(0)
