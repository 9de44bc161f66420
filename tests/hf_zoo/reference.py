"""Independent oracles for the Hugging Face zoo. Imports nothing from hesskit, on purpose.

The model is the dropout-free twin of a case (``models.HFCase.reference_model``), called as
``torch.func.functional_call(model, params, args=(), kwargs=inputs).logits`` under torch's
math attention kernel (it has a double backward and forward-mode AD). The loss is written
here by hand:

    L(θ) = Σ_b S_b(z_b) / D,     S_b = Σ_{kept tokens t of batch b} −log softmax(z_bt)[y_bt],

with D the number of kept tokens over ALL batches (the exact token mean), where

* ``"causal_lm"``: z_b = logits[:, :-1], y_b = labels[:, 1:], tokens labelled -100 dropped;
* ``"token"``: the same without the shift (labels already aligned with the logits);
* ``"classification"``: one "token" per sample, D = the number of samples.

Sample i's own loss ℓ_i is the sum over its kept tokens, and its weight a_i = 1/D, so
L = Σ_i a_i ℓ_i, G = Σ_b J_bᵀ ∂²(S_b/D)/∂z² J_b and EF = Σ_i a_i ∇ℓ_i ∇ℓ_iᵀ. For
train-mode BatchNorm, ∇ℓ_i is the gradient of sample i's term of the batch forward (the
other samples of its batch held as data); that equals J_bᵀ r_i, r_i = ∂ℓ_i/∂z_b.

Flat vectors: ``model.named_parameters()`` order (a tied weight appears once), each tensor
flattened row-major.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

IGNORE = -100
Batch = tuple[dict[str, Tensor], Tensor]


def token_terms(logits: Tensor, targets: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Per-sample sums of the token losses ``[n]`` and kept-token counts ``[n]``, by hand."""
    if kind == "causal_lm":
        logits, targets = logits[:, :-1], targets[:, 1:]
    elif kind == "classification":
        logits, targets = logits[:, None], targets[:, None]
    elif kind != "token":
        raise ValueError(f"unknown loss kind {kind!r}")
    kept = targets != IGNORE
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_token = torch.where(kept, -picked, torch.zeros_like(picked))
    return per_token.sum(dim=1), kept.sum(dim=1)


class Oracle:
    """L(θ), its derivatives and curvature products for one model, loss kind and data.

    Args:
        model: the dropout-free twin (its parameter values are the point θ₀).
        kind: ``"causal_lm"``, ``"token"`` or ``"classification"``.
        data: the batches ``(inputs_dict, targets)``.
        names: the parameters θ ranges over (default: all, ``named_parameters()`` order).
    """

    def __init__(
        self, model: nn.Module, kind: str, data: Sequence[Batch], names: Sequence[str] | None = None
    ) -> None:
        self.model, self.kind, self.data = model, kind, list(data)
        named = dict(model.named_parameters())
        self.fixed = {n: p.detach() for n, p in named.items()}
        self.names = list(named) if names is None else [n for n in named if n in set(names)]
        self.shapes = [named[n].shape for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.theta = torch.cat([self.fixed[n].reshape(-1) for n in self.names])
        with torch.no_grad():
            self.count = sum(int(token_terms(self.logits(self.theta, x), y, kind)[1].sum())
                             for x, y in self.data)

    # -- the function ---------------------------------------------------------------------

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        params = dict(self.fixed)
        pieces = theta.split(self.sizes)
        for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True):
            params[name] = piece.reshape(shape)
        return params

    def logits(self, theta: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """z = f(θ, X): the model's ``.logits`` with the flat parameters ``theta``."""
        with sdpa_kernel(SDPBackend.MATH):
            out = functional_call(self.model, self.unflatten(theta), args=(), kwargs=inputs)
        return out.logits

    def batch_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """S_b(z) / D: batch b's share of L as a function of its logits."""
        return token_terms(logits, targets, self.kind)[0].sum() / self.count

    def loss(self, theta: Tensor | None = None) -> Tensor:
        """L(θ) = Σ_b S_b / D."""
        theta = self.theta if theta is None else theta
        return sum(self.batch_loss(self.logits(theta, x), y) for x, y in self.data)

    # -- first and second derivatives --------------------------------------------------------

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        theta = (self.theta if theta is None else theta).detach().requires_grad_(True)
        return torch.autograd.grad(self.loss(theta), theta)[0]

    def hessian_vector(self, v: Tensor) -> Tensor:
        """H v by double backward."""
        theta = self.theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(theta), theta, create_graph=True)
        return torch.autograd.grad(g, theta, v)[0]

    def hessian_matmat(self, V: Tensor) -> Tensor:
        return torch.stack([self.hessian_vector(v) for v in V.T], dim=1)

    def hessian_dense(self) -> Tensor:
        """The dense H over ``names`` (use a small block) by ``autograd.functional.hessian``."""
        return torch.autograd.functional.hessian(self.loss, self.theta)

    def output_hessian_vector(self, logits: Tensor, targets: Tensor, u: Tensor) -> Tensor:
        """H_ℓ u = ∂²(S_b/D)/∂z² u by double backward of the hand-written loss."""
        z = logits.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.batch_loss(z, targets), z, create_graph=True)
        return torch.autograd.grad(g, z, u)[0]

    def jacobian_vector(self, inputs: dict[str, Tensor], v: Tensor) -> tuple[Tensor, Tensor]:
        """z and J v, by reverse mode only: J v = ∂/∂u ⟨Jᵀu, v⟩ (double vjp).

        Not ``torch.func.jvp``: forward mode does not know ``nn.Embedding``'s
        ``padding_idx`` convention (the backward gives the padding row a zero gradient, as
        if it were a constant; the forward-mode tangent moves it), so for BERT and BART,
        whose pad token occurs in the data, jvp's J is not the transpose of the vjp's Jᵀ.
        """
        theta = self.theta.clone().requires_grad_(True)
        z = self.logits(theta, inputs)
        u = torch.zeros_like(z, requires_grad=True)
        (Jt_u,) = torch.autograd.grad(z, theta, u, create_graph=True)
        (Jv,) = torch.autograd.grad(Jt_u, u, v)
        return z.detach(), Jv

    def gauss_newton_vector(self, v: Tensor) -> Tensor:
        """G v = Σ_b J_bᵀ H_ℓb J_b v (J v as :meth:`jacobian_vector`, Jᵀ w by
        ``torch.func.vjp``)."""
        total = torch.zeros_like(self.theta)
        for x, y in self.data:
            z, Jv = self.jacobian_vector(x, v)
            _, pullback = vjp(lambda t, x=x: self.logits(t, x), self.theta)
            total += pullback(self.output_hessian_vector(z, y, Jv))[0]
        return total

    def gauss_newton_matmat(self, V: Tensor) -> Tensor:
        return torch.stack([self.gauss_newton_vector(v) for v in V.T], dim=1)

    def jacobian(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The logits z and the explicit Jacobian ∂z/∂θ, ``[z.numel(), N]``, one row per
        backward pass."""
        theta = self.theta.clone().requires_grad_(True)
        z = self.logits(theta, inputs)
        flat = z.reshape(-1)
        rows = [torch.autograd.grad(flat[m], theta, retain_graph=True)[0]
                for m in range(flat.numel())]
        return z.detach(), torch.stack(rows)

    def gauss_newton_dense(self) -> Tensor:
        """The dense G = Σ_b J_bᵀ H_ℓb J_b from explicit Jacobians and the dense output
        Hessian of the hand-written loss (``autograd.functional.hessian``)."""
        total = torch.zeros(self.theta.numel(), self.theta.numel(), dtype=self.theta.dtype)
        for x, y in self.data:
            z, J = self.jacobian(x)
            H_out = torch.autograd.functional.hessian(
                lambda flat, y=y, shape=z.shape: self.batch_loss(flat.reshape(shape), y),
                z.reshape(-1),
            )
            total += J.T @ H_out @ J
        return total

    # -- the empirical Fisher ------------------------------------------------------------

    def per_sample_gradients(self) -> Tensor:
        """∇ℓ_i for every sample i of every batch, ``[n_total, N]`` (ℓ_i unscaled: the sum
        of sample i's token losses; its weight in L is 1/D)."""
        rows = []
        for x, y in self.data:
            theta = self.theta.clone().requires_grad_(True)
            sums, _ = token_terms(self.logits(theta, x), y, self.kind)
            rows += [torch.autograd.grad(s, theta, retain_graph=True)[0] for s in sums]
        return torch.stack(rows)

    def empirical_fisher_matmat(self, V: Tensor, grads: Tensor | None = None) -> Tensor:
        """EF V = (1/D) Σ_i ∇ℓ_i (∇ℓ_iᵀ V)."""
        grads = self.per_sample_gradients() if grads is None else grads
        return grads.T @ (grads @ V) / self.count

    def empirical_fisher_diagonal(self, grads: Tensor | None = None) -> Tensor:
        """diag(EF) = (1/D) Σ_i ∇ℓ_i ⊙ ∇ℓ_i."""
        grads = self.per_sample_gradients() if grads is None else grads
        return (grads**2).sum(0) / self.count


# -- finite differences ------------------------------------------------------------------------


def central_difference(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, eps: float) -> Tensor:
    """(f(x + εv) − f(x − εv)) / 2ε: error O(ε²) plus rounding O(u/ε)."""
    return ((f(x + eps * v) - f(x - eps * v)) / (2 * eps)).detach()


def relative_error(got: Tensor, want: Tensor) -> float:
    """‖got − want‖ / ‖want‖ (Frobenius), or ‖got‖ when want is zero."""
    scale = float(torch.linalg.norm(want))
    diff = float(torch.linalg.norm(got.to(want.dtype) - want))
    return diff / scale if scale > 0 else diff
