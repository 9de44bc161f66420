"""The empirical-Fisher diagonal from the gradient's own backward pass: per-sample squares
without a second pass over the data.

For a data loss L(θ) = c Σ_n ℓ_n(θ) (c the loss's reduction factor, ℓ_n the unscaled loss of
case n) and an ``nn.Linear`` layer z = a Wᵀ + b that is called once per forward pass, case
n's gradient of L is ∂L_n/∂W = G_n a_nᵀ and ∂L_n/∂b = G_n, with G_n = ∂L/∂z_n (row n of the
output gradient [n, k] that the backward pass computes anyway) and a_n row n of the layer's
input [n, d]. So, for every weight and bias entry,

    Σ_n (∂L_n/∂W)⊙(∂L_n/∂W) = (G⊙G)ᵀ (a⊙a)  [k, d],     Σ_n (∂L_n/∂b)² = Σ_n G_n⊙G_n  [k],

and the empirical-Fisher diagonal of ``hesskit.estimators.exact_diagonal.
empirical_fisher_diagonal``, c Σ_n g_n⊙g_n with g_n = ∇ℓ_n unscaled, is (1/c) times these
sums (∂L_n = c g_n). This is BackPACK's ``SumGradSquared`` (Dangel, Kunstner & Hennig 2020,
"BackPACK: Packing more into backprop", ICLR, §2 and Table 1) and Martens' ``grad2``
(HFDemo ``nnet_train_2.m`` lines 1086–1087, 1106). Cost: one [k, n]×[n, d] product and two
elementwise squares per layer inside the backward pass (about a third of a gradient on a
Linear chain), instead of a separate per-sample pass (≈ 1.2 gradients through the chain on
Martens' MNIST autoencoder, more by ``vmap``).

The formula holds only where case n's gradient is that one outer product. :class:`
GradientSquares` therefore PROVES each captured pass and returns None (the caller then
takes the separate pass) unless all of this holds:

1. every module that holds parameters is an ``nn.Linear``, no parameter is registered twice
   (no tied weights), every parameter requires a gradient, and the dtype is float32 or
   float64 (:func:`hesskit.engine.check_parameters`);
2. the forward pass is a chain of the engine's table (``hesskit.engine.record_chain`` on
   the first two cases of the same input: elementwise activations, pass-throughs, inactive
   dropout; no operation outside the modules, no Linear called twice); proved again
   whenever the sequence of module calls or any module's train/eval mode changes (a
   data-dependent branch that adds an operation is caught by condition 3: the next module
   would not receive the unchanged output of the one before);
3. the captured pass itself called the same modules in the same order, each on exactly the
   tensor the previous one returned, unchanged (tensor versions) from then until the
   backward pass read it; the model's output is its last module's output; and each
   Linear's output gradient arrived exactly once;
4. the gradient that reached the model's output z equals s · ∂ loss(z, y)/∂z for the
   targets given (compared on :data:`CHECKED_CASES` cases spread over the batch), with
   s = 1 in one process (the closure's data term is ``loss(model(X), y)``) and, data
   parallel, one scalar s > 0 per rank, the rank's share of the global loss
   (``hesskit.distributed.sample_fraction``; its data term is s · ``loss(model(X_r), y_r)``);
   other terms of the objective may depend on the parameters only, as a weight cost does.
   The loss is one of hesskit's closed-form losses (separable over cases by construction,
   c from ``Loss.scale``), not an ``AutodiffLoss`` of an arbitrary callable. Each rank's
   part is then its squares divided by s·c, s·c being the global reduction factor;
5. data parallel (``torch.distributed``), every rank's pass is proved (one all-reduce of a
   flag), and the ranks' parts are summed (one all-reduce of the N-vector), as
   ``empirical_fisher_diagonal`` of a distributed ``Problem`` sums them; else every rank
   refuses together.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hesskit.distributed import all_reduce_sum, is_distributed
from hesskit.engine import check_parameters, record_chain
from hesskit.errors import UnsupportedArchitectureError
from hesskit.losses import as_loss
from hesskit.losses.autodiff import AutodiffLoss
from hesskit.tensor_tree import select

PROOF_CASES = 2
"""Cases of the captured input on which the chain is proved (its structure; condition 2)."""

CHECKED_CASES = 16
"""Cases, spread over the batch, on which condition 4 compares the output gradient with the
loss's (all cases of a smaller batch): the loss is separable, so each case's row of G is
c·∂ℓ_n/∂z_n on its own, and checking every row would cost a loss gradient on the whole
output (about a gradient of a small network such as the digits autoencoder)."""

GRADIENT_RTOL = 1e-4
"""Relative tolerance of condition 4: the output gradient against ∂ loss(z, y)/∂z (both
autograd of the same expression in the same dtype; they agree to rounding)."""


@dataclass
class _Pass:
    """What one captured forward/backward pass recorded."""

    inputs: Tensor | None = None
    input_version: int = 0
    output: Tensor | None = None
    output_gradient: Tensor | None = None
    output_scale: float = 1.0
    calls: list[tuple[nn.Module, Tensor, int]] = field(default_factory=list)
    returned: list[tuple[Tensor, int]] = field(default_factory=list)
    squares: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    arrivals: dict[int, int] = field(default_factory=dict)
    violation: str | None = None
    calls_of_model: int = 0

    def fail(self, reason: str) -> None:
        if self.violation is None:
            self.violation = reason


class GradientSquares:
    """Σ_n per-sample squared gradients of ``loss(model(X), y)``, taken in its backward pass.

    Usage (what ``HessianFree`` does through ``DiagonalPreconditioner.gradient_pass``)::

        squares = GradientSquares(model, loss)
        with squares.capture(y):
            optimizer.zero_grad(); loss(model(X), y).backward()   # the ordinary gradient
        d = squares.empirical_fisher_diagonal()   # flat [N], or None: take the extra pass

    Attributes:
        model: the network; the flat layout of the diagonal is ``model.parameters()``.
        loss: the loss module the closure applies to the model's output.
        reason: why the last pass was not proved (None when it was, or before any pass).
        hook_passes: passes whose diagonal came from the backward pass.
        refused_passes: passes that were not proved (the caller took the extra pass).
    """

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        self.model, self.loss = model, loss
        self.reason: str | None = None
        self.hook_passes = 0
        self.refused_passes = 0
        self._pass: _Pass | None = None
        self._targets: object = None
        self._static_reason: str | bool | None = False  # False: not checked yet
        self._proved: tuple[tuple[int, ...], tuple[bool, ...]] | None = None

    @contextlib.contextmanager
    def capture(self, targets: object) -> Iterator[None]:
        """Hooks on the model while the block runs ONE forward and backward pass of
        ``loss(model(X), targets)``; :meth:`empirical_fisher_diagonal` reads the result."""
        self._pass, self._targets = None, targets
        if self._static_check() is not None:
            yield
            return
        record = _Pass()
        handles = self._install(record)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self._pass = record

    def empirical_fisher_diagonal(self) -> Tensor | None:
        """c Σ_n g_n⊙g_n (g_n = ∇ℓ_n unscaled), flat ``[N]`` in ``model.parameters()``
        order, from the last captured pass; None (and :attr:`reason` set) when that pass is
        not proved (module docstring) or there was none since the last call."""
        record, self._pass = self._pass, None
        reason = self._static_check()
        if reason is None:
            reason = "no captured gradient pass" if record is None else self._prove(record)
        if is_distributed():  # all ranks take the same path (and the same collectives)
            device = next(self.model.parameters()).device
            refused = all_reduce_sum(torch.tensor([float(reason is not None)], device=device))
            if reason is None and float(refused[0]) > 0:
                reason = "the pass of another rank was not proved"
        self.reason = reason
        if reason is not None:
            self.refused_passes += 1
            return None
        assert record is not None and record.output is not None
        c = float(as_loss(self.loss).scale(record.output.detach(), self._targets))
        scale = record.output_scale * c
        parts: list[Tensor] = []
        for module in self._linears():
            weight, bias = record.squares[id(module)]
            parts.append(weight.reshape(-1))
            if bias is not None:
                parts.append(bias)
        self.hook_passes += 1
        diagonal = torch.cat(parts) / scale
        return all_reduce_sum(diagonal.contiguous()) if is_distributed() else diagonal

    # -- the proof --------------------------------------------------------------------

    def _linears(self) -> list[nn.Module]:
        """The Linear modules in the order their parameters appear in ``parameters()``."""
        seen: list[nn.Module] = []
        for module in self.model.modules():
            if isinstance(module, nn.Linear) and module not in seen:
                seen.append(module)
        return seen

    def _static_check(self) -> str | None:
        """Condition 1 and the loss half of 4 (cached: they do not change per pass)."""
        if self._static_reason is False:
            self._static_reason = self._static_reason_now()
        return self._static_reason  # type: ignore[return-value]

    def _static_reason_now(self) -> str | None:
        try:
            check_parameters(self.model)
        except UnsupportedArchitectureError as error:
            return str(error)
        parameters = list(self.model.parameters())
        if not parameters:
            return "the model has no parameters"
        if any(not p.requires_grad for p in parameters):
            return "a parameter does not require a gradient"
        if any(p.dtype not in (torch.float32, torch.float64) for p in parameters):
            return "parameters other than float32/float64"
        order = [id(p) for m in self._linears() for p in (m.weight, m.bias) if p is not None]
        if order != [id(p) for p in parameters]:
            return "the parameters are not listed Linear by Linear, weight then bias"
        try:
            loss = as_loss(self.loss)
        except Exception as error:  # any loss hesskit cannot read
            return f"the loss is not one hesskit knows ({error})"
        if isinstance(loss, AutodiffLoss):
            return "the loss is an arbitrary callable (its split into cases is not known)"
        return None

    def _install(self, record: _Pass) -> list[torch.utils.hooks.RemovableHandle]:
        leaves = [m for m in self.model.modules() if next(m.children(), None) is None]
        handles = [self.model.register_forward_pre_hook(self._model_pre(record)),
                   self.model.register_forward_hook(self._model_post(record))]
        for module in leaves:
            handles.append(module.register_forward_pre_hook(self._leaf_pre(record)))
            handles.append(module.register_forward_hook(self._leaf_post(record)))
        return handles

    def _model_pre(self, record: _Pass) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            record.calls_of_model += 1
            if len(args) != 1 or not isinstance(args[0], Tensor):
                record.fail("the model is called with other than one tensor")
            else:
                record.inputs, record.input_version = args[0], args[0]._version
        return hook

    def _model_post(self, record: _Pass) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not isinstance(output, Tensor) or not output.requires_grad:
                record.fail("the model's output is not one tensor that requires a gradient")
                return
            record.output = output

            def keep(gradient: Tensor) -> None:
                if record.output_gradient is not None:
                    record.fail("the model's output received its gradient twice")
                record.output_gradient = gradient.detach()

            output.register_hook(keep)
        return hook

    def _leaf_pre(self, record: _Pass) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if len(args) != 1 or not isinstance(args[0], Tensor):
                record.fail(f"{type(module).__name__} is called with other than one tensor")
                return
            given = args[0]
            record.calls.append((module, given, given._version))
        return hook

    def _leaf_post(self, record: _Pass) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not isinstance(output, Tensor):
                record.fail(f"{type(module).__name__} returns other than one tensor")
                return
            record.returned.append((output, output._version))
            if isinstance(module, nn.Linear):
                self._watch_linear(record, module, args[0], output)
        return hook

    def _watch_linear(self, record: _Pass, module: nn.Linear, a: Tensor, z: Tensor) -> None:
        """At the backward pass through z: (G⊙G)ᵀ(a⊙a) and Σ_n G⊙G (module docstring)."""
        if a.ndim != 2 or not z.requires_grad:
            record.fail(f"an nn.Linear receives a {a.ndim}-d input or runs without autograd")
            return
        key, version = id(module), a._version

        def squares(gradient: Tensor) -> None:
            record.arrivals[key] = record.arrivals.get(key, 0) + 1
            if a._version != version:
                record.fail("the input of an nn.Linear was changed in place after it was used")
                return
            g2 = gradient.detach().square()
            weight = g2.T @ a.detach().square()
            record.squares[key] = (weight, g2.sum(0) if module.bias is not None else None)

        z.register_hook(squares)

    def _prove(self, record: _Pass) -> str | None:
        """Conditions 2, 3 and 4 on a captured pass (module docstring)."""
        if record.violation is not None:
            return record.violation
        if record.calls_of_model != 1 or record.inputs is None or record.output is None:
            return "the block did not run the model exactly once"
        called = tuple(id(module) for module, _, _ in record.calls)
        modes = tuple(module.training for module in self.model.modules())
        if self._proved != (called, modes):  # prove once per call sequence and train/eval
            try:
                chain = record_chain(self.model, select(record.inputs, slice(0, PROOF_CASES)))
            except UnsupportedArchitectureError as error:
                return str(error)
            if called != chain.structure():
                return "the captured pass called other modules than the proved chain"
            self._proved = (called, modes)
        if len(record.returned) != len(record.calls):
            return "a module call did not return"
        previous: tuple[Tensor, int] = (record.inputs, record.input_version)
        for (module, given, version), returned in zip(record.calls, record.returned,
                                                      strict=True):
            if given is not previous[0] or version != previous[1]:
                return (f"the input of {type(module).__name__} is not the unchanged output "
                        "of the module before it")
            previous = returned
        if record.output is not previous[0]:
            return "the model's output is not the output of its last module"
        linears = self._linears()
        if any(record.arrivals.get(id(m)) != 1 for m in linears):
            return "the backward pass did not reach every nn.Linear exactly once"
        return self._check_output_gradient(record)

    def _check_output_gradient(self, record: _Pass) -> str | None:
        """Condition 4: the closure differentiated s · ``loss(model(X), targets)``, s = 1 in
        one process; data parallel, sets ``record.output_scale`` = s, the rank's share (the
        least-squares fit of G = s·E)."""
        gradient = record.output_gradient
        if gradient is None:
            return "no gradient reached the model's output"
        output = record.output.detach()  # type: ignore[union-attr]
        n = output.shape[0]
        rows = torch.linspace(0, n - 1, min(n, CHECKED_CASES), device=output.device).round()
        rows = rows.long().unique()
        targets = select(self._targets, rows)
        z = output[rows].requires_grad_(True)
        loss = as_loss(self.loss)  # c of the whole batch over c of the rows checked
        ratio = loss.scale(output, self._targets) / loss.scale(z.detach(), targets)
        with torch.enable_grad():
            (expected,) = torch.autograd.grad(self.loss(z, targets), z)
        expected, gradient = ratio * expected, gradient[rows]
        norm = float(expected.square().sum())
        scale = 1.0
        if is_distributed():
            scale = float((gradient * expected).sum()) / norm if norm > 0 else math.nan
        if not (math.isfinite(scale) and scale > 0):
            return ("the gradient at the model's output is no positive multiple of that of "
                    "loss(model(X), y) (or it vanishes)")
        expected = scale * expected
        tolerance = GRADIENT_RTOL * float(expected.abs().max()) + torch.finfo(z.dtype).tiny
        if not torch.allclose(gradient, expected, rtol=GRADIENT_RTOL, atol=tolerance):
            return ("the gradient at the model's output is not that of loss(model(X), y) "
                    "for the targets given (another loss, scale or batch)")
        record.output_scale = scale
        return None
