"""Any loss callable ℓ(z, y) → scalar, with its output curvature from automatic differentiation.

H_ℓ u is reverse-over-reverse: ``torch.func.vjp`` of ``torch.func.grad`` of the loss in its
output, i.e. one gradient and one backward pass of it per vector (forward-over-reverse is
avoided: through ``nn.MSELoss`` it raises on torch 2.13). The per-sample blocks of H_ℓ
come from k products with the unit vectors e_j repeated over the samples (exact when the
loss separates over samples, which ``hessian_sqrt`` checks on the first batch), and their
factor from an eigendecomposition, O(n k³).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vjp, vmap

from hesskit.errors import InvalidArgumentError
from hesskit.losses.base import Loss, flat

LossFunction = Callable[[Tensor, Tensor], Tensor]


def autodiff_hessian_vector(value: Callable[[Tensor], Tensor], z: Tensor, u: Tensor) -> Tensor:
    """∂²value/∂z² · u by reverse-over-reverse; u shaped like z or ``[K, *z.shape]``."""
    _, product = vjp(grad(value), z)
    if u.ndim == z.ndim + 1:
        return vmap(lambda v: product(v)[0])(u)
    return product(u)[0]


class AutodiffLoss(Loss):
    """A user loss ``loss(output, target) -> scalar`` (a function or an ``nn.Module``).

    Assumption on the reduction, which decides how batches are weighted:

    * ``"mean"`` (default): the value is a mean over the n samples of per-sample losses
      (each may itself be a mean over the sample's outputs), c = 1/n, and batches are
      weighted by their sample counts (``normalizer`` = n);
    * ``"sum"``: the value is a sum over samples, c = 1.

    ``hessian_vector`` needs nothing more than differentiability (twice, by ``torch.func``).
    ``hessian_sqrt`` also needs the loss to separate over samples (no term couples two
    samples; checked once, on the first call, from one product) and to be convex in the
    outputs: a negative eigenvalue of a per-sample block raises, and sets ``convex`` to
    False. ``convex=True`` is an assumption until then. No likelihood: no Fisher sampling.
    """

    reductions = ("mean", "sum")

    def __init__(self, loss: LossFunction, reduction: str = "mean", *, convex: bool = True) -> None:
        super().__init__(reduction)
        if not callable(loss):
            raise InvalidArgumentError(
                f"AutodiffLoss needs a callable loss(output, target) -> scalar, got {loss!r}"
            )
        self.loss = loss
        self.convex = convex
        self._separability_checked = False

    def describe(self) -> str:
        name = getattr(self.loss, "__name__", type(self.loss).__name__)
        return f"AutodiffLoss({name})"

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        out = self.loss(z, y)
        if not isinstance(out, Tensor) or out.ndim != 0:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InvalidArgumentError(
                f"{self.describe()} returned {shape}, not a scalar tensor; reduce the loss "
                f"over the batch (mean or sum)"
            )
        _check_precision(self, z, out)
        return out

    def reduction_factor(self, z: Tensor, y: Tensor | None = None) -> float:
        return 1.0 if self.reduction == "sum" else 1.0 / z.shape[0]

    def _mean_count(self, z: Tensor | None, y: Tensor | None) -> float:
        return (z if z is not None else y).shape[0]

    def hessian_vector(self, z: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return autodiff_hessian_vector(lambda out: self.value(out, y), z, u)

    def sample_hessians(self, z: Tensor, y: Tensor) -> Tensor:
        """The per-sample blocks ∂²ℓ/∂z_i², ``[n, k, k]`` (c included), from k products."""
        self._check_separable(z, y)
        n, k = flat(z).shape
        basis = torch.eye(k, dtype=z.dtype, device=z.device).reshape(k, 1, *z.shape[1:])
        columns = self.hessian_vector(z, y, basis.expand(k, *z.shape))
        blocks = columns.reshape(k, n, k).permute(1, 2, 0)
        return (blocks + blocks.transpose(1, 2)) / 2

    def hessian_sqrt(self, z: Tensor, y: Tensor) -> Tensor:
        self.require_convex("hessian_sqrt")
        eigenvalues, eigenvectors = torch.linalg.eigh(self.sample_hessians(z, y))
        k = eigenvalues.shape[-1]
        size = eigenvalues.abs().amax(-1, keepdim=True)
        tolerance = 100 * k * torch.finfo(z.dtype).eps * size
        if bool((eigenvalues < -tolerance).any()):
            self.convex = False
            self.require_convex("hessian_sqrt found a negative eigenvalue of H_ℓ")
        return eigenvectors * eigenvalues.clamp(min=0).sqrt().unsqueeze(-2)

    def _check_separable(self, z: Tensor, y: Tensor) -> None:
        """H_ℓ u with u on sample 0 only must vanish on the other samples."""
        if self._separability_checked or z.shape[0] < 2:
            return
        u = torch.zeros_like(z)
        u[0] = torch.linspace(1.0, 2.0, z[0].numel(), dtype=z.dtype).reshape(z.shape[1:])
        product = flat(self.hessian_vector(z, y, u))
        leak, size = product[1:].norm(), product.norm()
        if leak > torch.finfo(z.dtype).eps ** 0.5 * size:
            raise InvalidArgumentError(
                f"{self.describe()} couples different samples (its output Hessian has a "
                f"block between sample 0 and others), so it has no per-sample factor; use "
                f"the Gauss-Newton or Hessian operators, which need only products"
            )
        self._separability_checked = True


def _check_precision(loss: AutodiffLoss, z: Tensor, value: Tensor) -> None:
    """Refuse a loss that computes in a LOWER precision than the outputs (a cast of the
    logits to float32 in a float64 model, as ``transformers``' ``loss_function`` does):
    its curvature would carry the lower precision's rounding under the outputs' dtype."""
    if not (z.is_floating_point() and value.is_floating_point()):
        return
    if torch.finfo(value.dtype).eps > torch.finfo(z.dtype).eps:
        raise InvalidArgumentError(
            f"{loss.describe()} returns a {value.dtype} value for {z.dtype} outputs: it "
            "casts the outputs to a lower precision (Hugging Face's model.loss_function "
            "casts logits to float32), so its derivatives carry that precision's rounding; "
            "use a loss that keeps the outputs' dtype (hesskit.losses.CausalLMLoss or "
            "CrossEntropyLoss for language models), or run the model in that dtype"
        )
