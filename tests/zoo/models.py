"""A zoo of small float64 models, each with a loss and data, for checking hesskit end to end.

Every factory builds its model, loss and batches from fixed seeds (the global RNG is left as
it was) and returns a :class:`ZooCase`. N stays at most a few hundred parameters so that the
dense references of ``tests/reference.py`` are cheap. The zoo deliberately includes what a
"chain of layers" detector can get wrong: functional and in-place activations between
modules, tied weights, a module called twice, residual adds, frozen parameters, a
parameter subset and an operation after the last module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import Tensor, nn

DTYPE = torch.float64


@dataclass
class ZooCase:
    """One model with its loss and data (``(model, loss, data)`` plus what a test needs).

    Attributes:
        name: the test id.
        model: the float64 ``nn.Module`` (in eval mode where that matters).
        loss: a torch loss module.
        data: a list of batches ``(inputs, targets)``; the last may be smaller.
        params: the parameter names to differentiate, or None for all that require grad.
        smooth: every operation is twice continuously differentiable (finite differences
            of the Hessian apply).
        slow: mark the model's tests ``pytest.mark.slow``.
        tiny: small enough for a Monte-Carlo Fisher average over many samples.
    """

    name: str
    model: nn.Module
    loss: nn.Module
    data: list[tuple[Tensor, Tensor]]
    params: list[str] | None = None
    smooth: bool = True
    slow: bool = False
    tiny: bool = False
    notes: str = field(default="", repr=False)

    @property
    def names(self) -> list[str]:
        """The differentiated parameter names, in ``named_parameters()`` order."""
        named = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if self.params is None:
            return named
        wanted = set(self.params)
        return [n for n, _ in self.model.named_parameters() if n in wanted]

    def all_data(self) -> tuple[Tensor, Tensor]:
        """All batches concatenated: the total loss is the loss on these (mean or sum)."""
        return torch.cat([x for x, _ in self.data]), torch.cat([y for _, y in self.data])

    def sample_weight(self) -> float:
        """a_i: the weight of sample i's own (summed over outputs) loss in the total loss."""
        X, _ = self.all_data()
        n = len(X)
        if self.loss.reduction == "sum":
            return 1.0
        if isinstance(self.loss, nn.CrossEntropyLoss):
            return 1.0 / n
        with torch.no_grad():
            k = self.model(X[:1]).numel()
        return 1.0 / (n * k)

    def per_sample_loss(self) -> nn.Module:
        """The same loss with ``reduction="sum"``: ℓ_i of one sample, unscaled."""
        return type(self.loss)(reduction="sum")


# -- data ------------------------------------------------------------------------------------


def _split(X: Tensor, y: Tensor, sizes: tuple[int, ...]) -> list[tuple[Tensor, Tensor]]:
    batches, start = [], 0
    for size in sizes:
        batches.append((X[start : start + size], y[start : start + size]))
        start += size
    assert start == len(X)
    return batches


def _targets(loss: nn.Module, n: int, k: int, g: torch.Generator) -> Tensor:
    if isinstance(loss, nn.CrossEntropyLoss):
        return torch.randint(0, k, (n,), generator=g)
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return torch.bernoulli(torch.full((n, k), 0.5, dtype=DTYPE), generator=g)
    return torch.randn(n, k, generator=g, dtype=DTYPE)


def _data(
    loss: nn.Module,
    input_shape: tuple[int, ...],
    k: int,
    sizes: tuple[int, ...] = (4, 4, 2),
    seed: int = 0,
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1000 + seed)
    n = sum(sizes)
    X = torch.randn(n, *input_shape, generator=g, dtype=DTYPE)
    return _split(X, _targets(loss, n, k, g), sizes)


def _build(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make()
    return model.to(DTYPE).eval()


LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "ce": nn.CrossEntropyLoss,
    "bce": nn.BCEWithLogitsLoss,
}


# -- MLPs as nn.Sequential with every activation module -------------------------------------

SMOOTH_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": lambda: nn.ELU(alpha=0.7),  # C¹ only at 0 for alpha ≠ 1, but never hit exactly
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "softplus_beta2": lambda: nn.Softplus(beta=2.0),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(alpha=1.3),
    "softsign": nn.Softsign,
    "logsigmoid": nn.LogSigmoid,
    "tanhshrink": nn.Tanhshrink,
}
KINKED_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "relu6": nn.ReLU6,
    "hardtanh": lambda: nn.Hardtanh(-0.8, 0.8),
}


def _sequential_mlp(activation: str, index: int) -> ZooCase:
    make_act = {**SMOOTH_ACTIVATIONS, **KINKED_ACTIVATIONS}[activation]
    loss_name = ("mse", "ce", "bce")[index % 3]
    loss = LOSSES[loss_name]()
    model = _build(
        index,
        lambda: nn.Sequential(
            nn.Linear(4, 6), make_act(), nn.Linear(6, 5), make_act(), nn.Linear(5, 3)
        ),
    )
    sizes = ((4, 4, 2), (10,), (6, 4))[index % 3]
    return ZooCase(
        f"seq_{activation}_{loss_name}",
        model,
        loss,
        _data(loss, (4,), 3, sizes, seed=index),
        smooth=activation in SMOOTH_ACTIVATIONS,
    )


# -- custom modules with functional and in-place activations --------------------------------


class FunctionalMLP(nn.Module):
    """x → l1 → act → l2 → act → l3, the activations called as functions in ``forward``."""

    def __init__(self, activation: Callable[[Tensor], Tensor], width: int = 5) -> None:
        super().__init__()
        self.activation = activation
        self.l1 = nn.Linear(4, width)
        self.l2 = nn.Linear(width, width)
        self.l3 = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.l1(x))
        h = self.activation(self.l2(h))
        return self.l3(h)


FUNCTIONAL_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], bool]] = {
    "relu": (F.relu, False),
    "tanh": (torch.tanh, True),
    "sigmoid": (torch.sigmoid, True),
    "gelu": (F.gelu, True),
    "relu_inplace": (lambda h: F.relu(h, inplace=True), False),
    "tanh_inplace": (lambda h: h.tanh_(), True),
    "sigmoid_inplace": (lambda h: h.sigmoid_(), True),
    "leaky_relu_inplace": (lambda h: F.leaky_relu(h, 0.1, inplace=True), False),
}


def _functional_mlp(activation: str, index: int) -> ZooCase:
    fn, smooth = FUNCTIONAL_ACTIVATIONS[activation]
    loss_name = ("mse", "ce", "bce")[index % 3]
    loss = LOSSES[loss_name]()
    model = _build(20 + index, lambda: FunctionalMLP(fn))
    return ZooCase(
        f"functional_{activation}_{loss_name}",
        model,
        loss,
        _data(loss, (4,), 3, (4, 4, 2), seed=20 + index),
        smooth=smooth,
    )


class ModuleActivationMLP(nn.Module):
    """A custom forward calling activation modules held as attributes."""

    def __init__(self, act1: nn.Module, act2: nn.Module) -> None:
        super().__init__()
        self.l1, self.act1 = nn.Linear(4, 5), act1
        self.l2, self.act2 = nn.Linear(5, 5), act2
        self.l3 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.l3(self.act2(self.l2(self.act1(self.l1(x)))))


# -- tied weights, reuse, residuals, outputs after the last module ---------------------------


class TiedMLP(nn.Module):
    """Two square layers sharing one weight tensor: ``l2.weight = l1.weight``."""

    def __init__(self, activation: Callable[[], nn.Module], width: int = 4) -> None:
        super().__init__()
        self.l1 = nn.Linear(width, width)
        self.a1 = activation()
        self.l2 = nn.Linear(width, width)
        self.l2.weight = self.l1.weight
        self.a2 = activation()
        self.l3 = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.l3(self.a2(self.l2(self.a1(self.l1(x)))))


def _tied_sequential(activation: Callable[[], nn.Module]) -> nn.Module:
    l1, l2 = nn.Linear(4, 4), nn.Linear(4, 4)
    l2.weight = l1.weight
    return nn.Sequential(l1, activation(), l2, activation(), nn.Linear(4, 3))


class LinearTwice(nn.Module):
    """One Linear module called twice in ``forward`` (weight sharing by reuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.inp(x))
        h = self.act(self.shared(h))
        h = self.act(self.shared(h))
        return self.out(h)


class ReusedActivation(nn.Module):
    """One activation module instance called after two different Linear layers."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.act = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.l3(self.act(self.l2(self.act(self.l1(x)))))


class Residual(nn.Module):
    """x → inp → h; h + f(h) with f = Linear → tanh → Linear; → out."""

    def __init__(self, activation: Callable[[Tensor], Tensor] = torch.tanh) -> None:
        super().__init__()
        self.activation = activation
        self.inp = nn.Linear(4, 4)
        self.f1 = nn.Linear(4, 4)
        self.f2 = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        h = h + self.f2(self.activation(self.f1(h)))
        return self.out(self.activation(h))


class ScaledOutput(nn.Module):
    """An operation after the last module: ``return 2 * fc(tanh(l1(x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.act, self.fc = nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return 2 * self.fc(self.act(self.l1(x)))


class ScaledInput(nn.Module):
    """An operation on the input before the first module: ``l2(tanh(l1(0.5 * x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.l2(self.act(self.l1(0.5 * x)))


# -- other layer types ------------------------------------------------------------------------


def _cnn(pool: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), pool(), nn.Flatten(), nn.Linear(8, 3))


class EmbeddingBag(nn.Module):
    """Embedding of token ids, mean over the sequence, then Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.act = nn.Tanh()
        self.fc = nn.Linear(4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.act(self.embed(tokens).mean(dim=1)))


class Recurrent(nn.Module):
    """An LSTM or GRU (batch_first); the last time step's hidden state into a Linear."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(input_size=2, hidden_size=3, batch_first=True)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def _batchnorm_eval() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.linspace(-0.5, 0.5, 5))
        model[1].running_var.copy_(torch.linspace(0.5, 2.0, 5))
        model[1].weight.copy_(torch.linspace(0.5, 1.5, 5))
        model[1].bias.copy_(torch.linspace(-0.2, 0.2, 5))
    return model


def _frozen(which: str) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    for name, p in model.named_parameters():
        if name in which.split(","):
            p.requires_grad_(False)
    return model


def _tokens(sizes: tuple[int, ...], seed: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1000 + seed)
    n = sum(sizes)
    X = torch.randint(0, 7, (n, 5), generator=g)
    return _split(X, torch.randint(0, 3, (n,), generator=g), sizes)


def _special_cases() -> dict[str, Callable[[], ZooCase]]:
    mse, ce, bce = nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss

    def case(name, seed, make, loss, input_shape=(4,), k=3, sizes=(4, 4, 2), **kw):
        def factory() -> ZooCase:
            loss_module = loss()
            return ZooCase(
                name,
                _build(seed, make),
                loss_module,
                _data(loss_module, input_shape, k, sizes, seed=seed),
                **kw,
            )

        return factory

    cases = {
        "module_relu_inplace_mse": case(
            "module_relu_inplace_mse",
            40,
            lambda: ModuleActivationMLP(nn.ReLU(inplace=True), nn.ReLU(inplace=True)),
            mse,
            smooth=False,
        ),
        "seq_relu_inplace_module_ce": case(
            "seq_relu_inplace_module_ce",
            41,
            lambda: nn.Sequential(
                nn.Linear(4, 5),
                nn.ReLU(inplace=True),
                nn.Linear(5, 5),
                nn.ReLU(inplace=True),
                nn.Linear(5, 3),
            ),
            ce,
            smooth=False,
        ),
        "module_mixed_act_bce": case(
            "module_mixed_act_bce",
            42,
            lambda: ModuleActivationMLP(nn.Tanh(), nn.Softplus()),
            bce,
        ),
        "seq_passthrough_mse": case(
            "seq_passthrough_mse",
            43,
            lambda: nn.Sequential(
                nn.Flatten(),
                nn.Linear(4, 5),
                nn.Identity(),
                nn.Tanh(),
                nn.Dropout(0.5),
                nn.Linear(5, 3),
                nn.Identity(),
            ),
            mse,
            input_shape=(2, 2),
        ),
        "seq_nested_ce": case(
            "seq_nested_ce",
            44,
            lambda: nn.Sequential(
                nn.Sequential(nn.Linear(4, 5), nn.Sigmoid()),
                nn.Sequential(nn.Linear(5, 3)),
            ),
            ce,
        ),
        "cnn_maxpool_ce": case(
            "cnn_maxpool_ce",
            45,
            lambda: _cnn(lambda: nn.MaxPool2d(2)),
            ce,
            input_shape=(1, 6, 6),
            smooth=False,
        ),
        "cnn_avgpool_mse": case(
            "cnn_avgpool_mse",
            46,
            lambda: _cnn(lambda: nn.AvgPool2d(2)),
            mse,
            input_shape=(1, 6, 6),
        ),
        "residual_tanh_mse": case("residual_tanh_mse", 47, Residual, mse),
        "residual_relu_ce": case(
            "residual_relu_ce", 48, lambda: Residual(F.relu), ce, smooth=False
        ),
        "batchnorm_eval_ce": case("batchnorm_eval_ce", 49, _batchnorm_eval, ce),
        "layernorm_mse": case(
            "layernorm_mse",
            50,
            lambda: nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)),
            mse,
        ),
        "lstm_mse": case(
            "lstm_mse",
            52,
            lambda: Recurrent(nn.LSTM),
            mse,
            input_shape=(3, 2),
            k=2,
            slow=True,
        ),
        "gru_ce": case(
            "gru_ce", 53, lambda: Recurrent(nn.GRU), ce, input_shape=(3, 2), k=2, slow=True
        ),
        "tied_custom_tanh_mse": case("tied_custom_tanh_mse", 54, lambda: TiedMLP(nn.Tanh), mse),
        "tied_custom_relu_mse": case(
            "tied_custom_relu_mse", 55, lambda: TiedMLP(nn.ReLU), mse, smooth=False
        ),
        "tied_sequential_sigmoid_ce": case(
            "tied_sequential_sigmoid_ce", 56, lambda: _tied_sequential(nn.Sigmoid), ce
        ),
        "frozen_first_bias_mse": case("frozen_first_bias_mse", 57, lambda: _frozen("0.bias"), mse),
        "frozen_middle_layer_ce": case(
            "frozen_middle_layer_ce", 58, lambda: _frozen("2.weight,2.bias"), ce
        ),
        "reused_activation_tanh_bce": case(
            "reused_activation_tanh_bce", 59, lambda: ReusedActivation(nn.Tanh()), bce
        ),
        "reused_activation_relu_mse": case(
            "reused_activation_relu_mse",
            60,
            lambda: ReusedActivation(nn.ReLU()),
            mse,
            smooth=False,
        ),
        "linear_twice_mse": case("linear_twice_mse", 61, LinearTwice, mse),
        "scaled_output_ce": case("scaled_output_ce", 62, ScaledOutput, ce),
        "scaled_input_mse": case("scaled_input_mse", 63, ScaledInput, mse),
        "seq_tanh_mse_sum": case(
            "seq_tanh_mse_sum",
            64,
            lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)),
            lambda: nn.MSELoss(reduction="sum"),
            sizes=(5, 3),
        ),
        "tiny_tanh_ce": case(
            "tiny_tanh_ce",
            65,
            lambda: nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 3)),
            ce,
            input_shape=(2,),
            sizes=(6,),
            tiny=True,
        ),
        "tiny_sigmoid_bce": case(
            "tiny_sigmoid_bce",
            66,
            lambda: nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 2)),
            bce,
            input_shape=(2,),
            k=2,
            sizes=(6,),
            tiny=True,
        ),
    }

    def embedding() -> ZooCase:
        return ZooCase(
            "embedding_mean_ce",
            _build(51, EmbeddingBag),
            nn.CrossEntropyLoss(),
            _tokens((4, 4, 2), 51),
        )

    def subset(name: str, params: list[str]) -> Callable[[], ZooCase]:
        def factory() -> ZooCase:
            loss = nn.MSELoss()
            model = _build(
                67,
                lambda: nn.Sequential(
                    nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)
                ),
            )
            return ZooCase(name, model, loss, _data(loss, (4,), 3, seed=67), params=params)

        return factory

    cases["embedding_mean_ce"] = embedding
    cases["params_last_layer_mse"] = subset("params_last_layer_mse", ["4.weight", "4.bias"])
    cases["params_scattered_mse"] = subset("params_scattered_mse", ["0.weight", "4.bias"])
    return cases


def _zoo() -> dict[str, Callable[[], ZooCase]]:
    zoo: dict[str, Callable[[], ZooCase]] = {}
    for index, activation in enumerate({**SMOOTH_ACTIVATIONS, **KINKED_ACTIVATIONS}):
        case = _sequential_mlp(activation, index)
        zoo[case.name] = lambda a=activation, i=index: _sequential_mlp(a, i)
    for index, activation in enumerate(FUNCTIONAL_ACTIVATIONS):
        case = _functional_mlp(activation, index)
        zoo[case.name] = lambda a=activation, i=index: _functional_mlp(a, i)
    zoo.update(_special_cases())
    return zoo


ZOO: dict[str, Callable[[], ZooCase]] = _zoo()
"""Every zoo model by name; each call builds a fresh, identical case."""


def make(name: str) -> ZooCase:
    """A fresh copy of the zoo case ``name``."""
    return ZOO[name]()
