"""KFC: K-FAC's Kronecker factors for ``nn.Conv2d`` (Grosse & Martens 2016, ICML).

A convolution with kernel W (``[out, in, kh, kw]``) and bias b computes, at each output
location t ∈ T (|T| = H_out · W_out), s_t = W̄ ā_t with W̄ = [W.reshape(out, in·kh·kw)  b]
and ā_t = [a_t; 1] the input patch under the kernel at t (``F.unfold``'s layout: channel,
then kernel row, then kernel column, the order of ``W.reshape(out, -1)``) with a
homogeneous 1. A sample's gradient is DW̄ = Σ_t Ds_t ā_tᵀ, so its Fisher block is

    F = E[Σ_t Σ_t' ā_t ā_t'ᵀ ⊗ Ds_t Ds_t'ᵀ].

KFC (Grosse & Martens 2016, §3) makes three assumptions: independent activations and
derivatives (IAD: the expectation factors into E[ā ā'ᵀ] ⊗ E[Ds Ds'ᵀ]), spatial homogeneity
(SH: the second moments depend on t − t' only) and spatially uncorrelated derivatives (SUD:
E[Ds_t Ds_t'ᵀ] = 0 for t ≠ t'). Then only t = t' survives and F ≈ Ω ⊗ Γ with the paper's
factors (§3.1, "Kronecker Factors for Convolution")

    Ω = E[Σ_t ā_t ā_tᵀ]                 (``[in·kh·kw + 1, in·kh·kw + 1]``; a SUM over t),
    Γ = (1/|T|) E[Σ_t Ds_t Ds_tᵀ]       (``[out, out]``; an AVERAGE over t),

the expectation over the training inputs (and, for the Fisher, over targets sampled from
the model). hesskit's A and G (:mod:`kfac_factors`) are these with its sample weights:
A = (1/n) Σ_i Σ_t ā_it ā_itᵀ and G = (1/|T|) Σ_i Σ_t δ_it δ_itᵀ with δ the output
gradients of the weighted total loss (scaled by 1/√c as for ``nn.Linear``). Where the
|T| sits does not matter to anything K-FAC computes: moving it between the factors
rescales π (the trace-norm correction) by |T| and leaves A ⊗ G, its inverse and the
factored damping (A + πγI) ⊗ (G + γ/π I) unchanged.

Exact case: for a one-layer linear convolution under mean squared error (H_ℓ = 2cI on
every output, so SUD and SH hold exactly and IAD trivially) the Gauss-Newton block is
Σ_i Σ_t ā_it ā_itᵀ ⊗ 2cI = A ⊗ G with the expected G (``FactorTargets.EXPECTED``).

Covered: ``nn.Conv2d`` with ``groups == 1``, ``padding_mode == "zeros"`` and numeric
padding, called on batched ``[n, in, H, W]`` inputs. Others are not covered and get the
optimizer's documented fallback (kfac.py).

Cost per batch: the unfold (n·|T|·in·kh·kw numbers) and O(n·|T|·((in·kh·kw)² + out²)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ConvGeometry:
    """The kernel, stride, padding and dilation of a covered ``nn.Conv2d`` (pairs)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, module: nn.Conv2d) -> ConvGeometry | None:
        """The geometry, or None where KFC here does not cover the layer (grouped or
        non-zero-padded convolutions, string padding such as ``"same"``)."""
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(
                module.padding, str):
            return None
        return cls(tuple(module.kernel_size), tuple(module.stride),  # type: ignore[arg-type]
                   tuple(module.padding), tuple(module.dilation))  # type: ignore[arg-type]

    def patches(self, inputs: Tensor) -> Tensor:
        """The input patches a_t, ``[n, |T|, in·kh·kw]`` for inputs ``[n, in, H, W]``."""
        unfolded = nn.functional.unfold(inputs, self.kernel_size, dilation=self.dilation,
                            padding=self.padding, stride=self.stride)
        return unfolded.transpose(1, 2)


def locations(outputs: Tensor) -> Tensor:
    """Per-location vectors ``[n, |T|, out]`` of a ``[n, out, H_out, W_out]`` tensor
    (outputs or their gradients), t in row-major order as ``F.unfold`` lists patches."""
    return outputs.flatten(2).transpose(1, 2)


def conv_factors(inputs: Tensor, deltas: list[Tensor], bias: bool,
                 geometry: ConvGeometry) -> tuple[Tensor, Tensor]:
    """A = (1/n) Σ_i Σ_t ā_it ā_itᵀ and G = (1/|T|) Σ_passes Σ_i Σ_t δ_it δ_itᵀ (module
    docstring) from the layer's inputs ``[n, in, H, W]`` and each backward pass' output
    gradients ``[n, out, H_out, W_out]``."""
    a = geometry.patches(inputs.detach())
    if bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    n, num_locations = a.shape[0], a.shape[1]
    a = a.reshape(n * num_locations, -1)
    A = a.T @ a / n
    G = sum(d.T @ d for d in (locations(delta).reshape(-1, delta.shape[1])
                              for delta in deltas)) / num_locations
    return A, G  # type: ignore[return-value]
