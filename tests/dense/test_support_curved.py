"""disjoint_support with curved activations: first-layer features never non-zero together.

Every per-sample term of H, G and R for W₁[i, a], W₁[j, b] carries x_n[a] x_n[b] when the
first module is a Linear on the raw data in a proved per-sample chain; the counts here are
by hand and by brute force (per-sample float64 Hessians from torch.func).
"""

import pytest
import torch
from tests.dense.test_joint_support import DISJOINT, count, per_sample_supports
from torch import nn

from hesskit.dense import hessian, structure_report
from hesskit.dense.structure import REASONS, zero_reason_codes
from hesskit.dense.support import first_layer_support

ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
               "softplus": nn.Softplus}


def disjoint_data(samples=10, seed=0):
    """Three features, all non-zero except: feature 0 off on the first half, feature 1 off on
    the second half, so x_n[0] x_n[1] = 0 on every sample (and no feature is always 0)."""
    torch.manual_seed(seed)
    X = torch.rand(samples, 3, dtype=torch.float64) + 0.5
    X[: samples // 2, 0] = 0.0
    X[samples // 2 :, 1] = 0.0
    return X, torch.randint(0, 2, (samples,))


def by_hand_mask(units, features=3):
    """True at (W₁[i, 0], W₁[j, 1]) and (W₁[i, 1], W₁[j, 0]) for all i, j (row-major W₁)."""
    mask = torch.zeros(units, features, units, features, dtype=torch.bool)
    mask[:, 0, :, 1] = mask[:, 1, :, 0] = True
    return mask.reshape(units * features, units * features)


def codes_of(result, part):
    codes, reasons = zero_reason_codes(result, part)
    return codes, reasons.index(DISJOINT), reasons.index("unexplained")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_first_layer_features_never_together_are_claimed_with_curved_activations(activation):
    act = ACTIVATIONS[activation]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 3), act(), nn.Linear(3, 2))
    model = model.double()
    X, y = disjoint_data()
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    report = structure_report(result)
    brute = per_sample_supports(result, model, X, y, nn.CrossEntropyLoss(reduction="sum"))
    first = result.layout.slice("0.weight")
    for part in "HGR":
        codes, disjoint, _ = codes_of(result, part)
        claimed = codes == disjoint
        assert torch.equal(claimed[first, first], by_hand_mask(4)), part
        assert int(claimed.sum()) == 2 * 4 * 4 == count(report, "0.weight", "0.weight", part)
        # brute force: exactly these entries of the block have no non-zero per-sample term
        assert torch.equal(~brute[part][first, first], by_hand_mask(4)), part
        assert torch.all(result.matrix(part)[claimed] == 0), part
        assert not torch.any(brute[part][claimed]), part


def test_overlap_on_one_sample_is_not_claimed_even_where_that_sample_adds_exactly_zero():
    """Features 0 and 1 are both non-zero on one sample, where every tanh unit saturates
    (tanh′ = 0 in float64): the entries are exactly zero, but x_n[0] x_n[1] ≠ 0 there, so
    the support proof does not hold and they stay unexplained."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight[:, :2] = 1.0
    X, y = disjoint_data(samples=11)
    X[10] = torch.tensor([50.0, 50.0, 0.0], dtype=torch.float64)  # a₁ ≥ 99: saturated
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    support = first_layer_support(result.problem, result.parameters)
    assert support is not None and bool(support.together[0, 1])
    first, hand = result.layout.slice("0.weight"), by_hand_mask(4)
    units = torch.arange(4).repeat_interleave(3)  # W₁[i, a] at i·3 + a
    other = (units[:, None] != units[None, :])[hand]  # of different units i ≠ j
    for part in "HGR":
        assert torch.all(result.matrix(part)[first, first][hand] == 0), part
        codes, disjoint, unexplained = codes_of(result, part)
        cut = codes[first, first][hand]
        if part == "R":  # different units: zero for every input (tanh, then only a Linear)
            assert torch.all(cut[other] == REASONS.index("separate_units_in_layer"))
            cut = cut[~other]
        assert torch.all(cut == unexplained), part
        assert not torch.any(codes == disjoint), part


class SkipFromInput(nn.Module):
    """Reads x twice: z = W₂ tanh(W₁ x + b₁) + b₂ + S x (the zeros hold, but no chain)."""

    def __init__(self):
        super().__init__()
        self.first, self.out, self.skip = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.first(x))) + self.skip(x)


class SecondLinearOnInput(nn.Module):
    """Two Linear layers on x, multiplied: z = W₃ (tanh(W₁ x) ⊙ tanh(W₂ x))."""

    def __init__(self):
        super().__init__()
        self.first, self.second, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.out(self.act(self.first(x)) * self.act(self.second(x)))


@pytest.mark.parametrize(
    "make",
    [
        SkipFromInput,
        SecondLinearOnInput,
        # the last tanh keeps separate_units_in_layer off the first weight block
        lambda: nn.Sequential(nn.Tanh(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()),
    ],
    ids=["skip_from_input", "second_linear_on_input", "first_module_not_linear"],
)
def test_models_not_proved_a_chain_from_a_first_linear_keep_those_zeros_unexplained(make):
    torch.manual_seed(0)
    model = make().double()
    X, y = disjoint_data()
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    assert first_layer_support(result.problem, result.parameters) is None
    weight = next(n for n in result.layout.names if n.endswith("weight"))
    first = result.layout.slice(weight)
    units = result.layout.shapes[result.layout.names.index(weight)][0]
    for part in "HGR":
        assert torch.all(result.matrix(part)[first, first][by_hand_mask(units)] == 0), part
        codes, disjoint, unexplained = codes_of(result, part)
        assert not torch.any(codes == disjoint), part
        assert torch.all(codes[first, first][by_hand_mask(units)] == unexplained), part


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Linear(3, 2)),
        lambda: WeightUsedTwice(),
    ],
    ids=["train_mode_batchnorm", "first_weight_used_twice"],
)
def test_where_the_factor_x_a_x_b_is_false_the_evidence_refuses(make):
    """Batch statistics mix the samples, and a weight applied again to a hidden layer sees
    more than x: the entries are then non-zero, and the evidence must not exist."""
    torch.manual_seed(0)
    model = make().double()
    X, y = disjoint_data()
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    assert first_layer_support(result.problem, result.parameters) is None
    first = result.layout.slice(result.layout.names[0])
    assert torch.all(result.matrix("H")[first, first][by_hand_mask(3)] != 0)


class WeightUsedTwice(nn.Module):
    """z = W₂ tanh(W₁ tanh(W₁ x)) with a square W₁."""

    def __init__(self):
        super().__init__()
        self.first, self.out = nn.Linear(3, 3, bias=False), nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.first(torch.tanh(self.first(x)))))


def test_a_user_loss_is_not_proved_to_separate_over_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, _ = disjoint_data()

    def loss(z, y):
        return ((z - y) ** 2).mean()

    result = hessian(model, loss, (X, torch.randn(len(X), 2, dtype=torch.float64)))
    assert first_layer_support(result.problem, result.parameters) is None
    assert DISJOINT not in structure_report(result).totals()["H"]


def test_batches_are_all_read_for_the_co_occurrence():
    """Features 0 and 1 meet in the second batch only: not claimed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = disjoint_data()
    X[-1, :2] = 1.0
    batches = [(X[:5], y[:5]), (X[5:], y[5:])]
    result = hessian(model, nn.CrossEntropyLoss(), batches)
    support = first_layer_support(result.problem, result.parameters)
    assert support is not None and support.weight == "0.weight"
    assert support.together.tolist() == [[True, True, True]] * 3
    single = hessian(model, nn.CrossEntropyLoss(), [(X[:5], y[:5]), (X[5:9], y[5:9])])
    assert not first_layer_support(single.problem, single.parameters).together[0, 1]
