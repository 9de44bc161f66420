"""Per-entry zero reasons (zero_reason_codes) and the point-dependent joint-support class."""

import pytest
import torch
from torch import nn

from hesskit.dense import hessian, structure_report
from hesskit.dense.structure import REASONS, zero_reason_codes
from hesskit.errors import InvalidArgumentError
from hesskit.models import mlp


def relu_net(sizes=(4, 5, 3), samples=12, seed=0, loss=None):
    torch.manual_seed(seed)
    model = mlp(list(sizes), "relu").double()
    X = torch.randn(samples, sizes[0], dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (samples,))
    return hessian(model, loss or nn.CrossEntropyLoss(), (X, y))


def test_codes_are_minus_one_exactly_on_non_zero_entries_and_count_as_the_report():
    torch.manual_seed(3)
    model = mlp([4, 5, 3], "relu").double()
    with torch.no_grad():
        model[0].bias[2] = -1e3  # a dead unit, so several reasons occur
    X = torch.randn(12, 4, dtype=torch.float64)
    X[:, 1] = 0.0  # an all-zero feature
    result = hessian(model, nn.MSELoss(), (X, torch.randn(12, 3, dtype=torch.float64)))
    report = structure_report(result)
    layout = result.layout
    for part in "HGR":
        codes, reasons = zero_reason_codes(result, part)
        assert reasons == REASONS and codes.dtype == torch.int8
        assert codes.shape == (layout.num_params, layout.num_params)
        assert torch.equal(codes == -1, result.matrix(part) != 0)
        for block in report.blocks:
            cut = codes[layout.slice(block.rows), layout.slice(block.columns)]
            counts = {r: int((cut == k).sum()) for k, r in enumerate(reasons)}
            assert {r: c for r, c in counts.items() if c} == block.zero_reasons[part]
    used = {REASONS[k] for k in zero_reason_codes(result, "R")[0].unique().tolist() if k >= 0}
    assert {"dead_unit", "zero_input_feature", "linear_in_layer"} <= used


def test_codes_refuse_an_unknown_part():
    with pytest.raises(InvalidArgumentError, match="part"):
        zero_reason_codes(relu_net(), "X")


# --- the disjoint_support class ------------------------------------------------------------

DISJOINT = "disjoint_support"


def per_sample_supports(result, model, X, y, loss):
    """Brute force: True where H_n, G_n or R_n is non-zero for some sample n (float64).

    G_n = J_nᵀ H_ℓ,n J_n and R_n = ∇²_θ (g_nᵀ z_n(θ)) with g_n = ∂ℓ_n/∂z_n held fixed, from
    torch.func on one sample at a time; independent of hesskit's evidence and builders.
    """
    from torch.func import functional_call, grad, hessian, jacrev

    layout = result.layout
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    N = layout.num_params
    support = {part: torch.zeros(N, N, dtype=torch.bool) for part in "HGR"}
    for n in range(len(X)):
        x, t = X[n : n + 1], y[n : n + 1]

        def z_of(flat, x=x):
            return functional_call(model, layout.unflatten(flat), (x,))[0]

        def loss_of_z(z, t=t):
            return loss(z[None], t)

        z, J = z_of(theta), jacrev(z_of)(theta)
        g = grad(loss_of_z)(z).detach()
        G = J.T @ hessian(loss_of_z)(z) @ J
        R = hessian(lambda flat, g=g: (g * z_of(flat)).sum())(theta)
        H = hessian(lambda flat: loss_of_z(z_of(flat)))(theta)
        for part, matrix in (("H", H), ("G", G), ("R", R)):
            support[part] |= matrix != 0
    return support


def check_against_brute_force(result, model, X, y, loss):
    """Every explained zero has an empty per-sample support, and every zero with an empty
    support is explained (for two-layer chains the factors are the whole story)."""
    support = per_sample_supports(result, model, X, y, loss)
    for part in "HGR":
        codes, reasons = zero_reason_codes(result, part)
        explained = (codes >= 0) & (codes != reasons.index("unexplained"))
        zero = result.matrix(part) == 0
        assert not torch.any(explained & support[part]), part
        assert torch.equal(explained, zero & ~support[part]), part


def count(report, rows, columns, part="H", reason=DISJOINT):
    block = next(b for b in report.blocks if (b.rows, b.columns) == (rows, columns))
    return block.zero_reasons[part].get(reason, 0)


def test_input_features_never_non_zero_together_are_disjoint_support():
    torch.manual_seed(0)
    model = mlp([4, 3, 2], "relu").double()
    with torch.no_grad():
        model[0].bias.fill_(10.0)  # every unit active on every sample
    X = torch.rand(8, 4, dtype=torch.float64) + 0.5
    X[:4, 0] = 0.0  # feature 0 only on samples 4-7, feature 1 only on samples 0-3
    X[4:, 1] = 0.0
    y = torch.randint(0, 2, (8,))
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    report = structure_report(result)
    # by hand: W1[i, 0] with W1[j, 1] (and the transpose) for all i, j: 2 · 3 · 3 entries
    W = result.block("0.weight", "0.weight").reshape(3, 4, 3, 4)
    assert torch.all(W[:, 0, :, 1] == 0) and torch.all(W[:, 1, :, 0] == 0)
    for part in "HG":
        assert count(report, "0.weight", "0.weight", part) == 18
        assert report.totals()[part] == {DISJOINT: 18}
    check_against_brute_force(result, model, X, y, nn.CrossEntropyLoss(reduction="sum"))


def test_units_never_active_together_are_disjoint_support_in_every_block():
    torch.manual_seed(1)
    model = mlp([3, 2, 2], "relu").double()
    X = torch.randn(8, 3, dtype=torch.float64)
    X[:, 0] = torch.tensor([1.0] * 4 + [-1.0] * 4)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]))
        model[0].bias.zero_()  # unit 0 active on samples 0-3 only, unit 1 on 4-7 only
    y = torch.randint(0, 2, (8,))
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    report = structure_report(result)
    # by hand (G and H): rows of unit 0 against rows of unit 1 in layer 1, and the last
    # layer's weights out of unit 0 against those out of unit 1 (x_1[0] x_1[1] = 0)
    expected = {
        ("0.weight", "0.weight"): 2 * 3 * 3,
        ("0.bias", "0.weight"): 2 * 3,
        ("0.bias", "0.bias"): 2,
        ("2.weight", "2.weight"): 2 * 2 * 2,
        ("2.weight", "0.weight"): 2 * 2 * 3,  # W2[k, p] with W1[i, ·], p ≠ i
        ("2.weight", "0.bias"): 2 * 2,
    }
    for (rows, columns), number in expected.items():
        assert count(report, rows, columns, "G") == number
        assert count(report, rows, columns, "H") == number
    assert "unexplained" not in report.totals()["H"]
    check_against_brute_force(result, model, X, y, nn.CrossEntropyLoss(reduction="sum"))


def test_tanh_claims_disjoint_features_but_not_a_saturated_unit():
    """With tanh only the factor x_n[a] x_n[b] of the first weight block is proved
    (:class:`~hesskit.dense.support.FirstLayerSupport`); a unit whose tanh′ underflows to 0
    has zero rows too, but nothing proves them (tanh′ > 0 in exact arithmetic)."""
    torch.manual_seed(0)
    model = mlp([3, 4, 2], "tanh").double()
    with torch.no_grad():
        model[0].bias[1] = -1e3  # tanh′ underflows to 0: zeros, but no proof
    X = torch.rand(10, 3, dtype=torch.float64) + 0.5
    X[:5, 0] = 0.0
    X[5:, 1] = 0.0
    result = hessian(model, nn.CrossEntropyLoss(), (X, torch.randint(0, 2, (10,))))
    report = structure_report(result)
    W = result.block("0.weight", "0.weight").reshape(4, 3, 4, 3)
    assert torch.all(W[:, 0, :, 1] == 0)  # x_0 x_1 = 0 on every sample
    for part in "HG":
        # by hand: W1[i, 0] with W1[j, 1] and the transpose, 2 · 4 · 4, in that block only
        assert count(report, "0.weight", "0.weight", part) == 32
        assert report.totals()[part][DISJOINT] == 32
    # in R the 2 · 4 · 3 of them between different units are separate_units_in_layer (zero
    # for every input, earlier in the order), the 2 · 4 of one unit stay disjoint_support
    assert count(report, "0.weight", "0.weight", "R") == 8 == report.totals()["R"][DISJOINT]
    within = count(report, "0.weight", "0.weight", "R", "separate_units_in_layer")
    assert within == 12 * 12 - 4 * 3 * 3  # every pair of different units of W₁
    # unit 1's 3 rows and columns in the block (3 · 12 · 2 − 9 = 63 entries), less its 14
    # entries already claimed above
    assert count(report, "0.weight", "0.weight", "H", "unexplained") == 63 - 14


def test_numerical_cancellation_with_overlapping_supports_stays_unexplained():
    model = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
    X = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    result = hessian(model, nn.MSELoss(), (X, torch.zeros(2, 1, dtype=torch.float64)))
    assert result.matrix()[0, 1] == 0  # Σ_n x_n0 x_n1 = 1 − 1 cancels exactly
    block = structure_report(result).blocks[0]
    assert block.zero_reasons["H"] == {"unexplained": 2}


def test_a_wrapped_chain_gets_the_first_layer_proof_but_not_the_sequential_one():
    """JointSupport reads an ``nn.Sequential``'s structure, so a wrapper has none; the
    recorded call chain still proves the first-layer factor x_n[a] x_n[b]."""
    from hesskit.dense.support import first_layer_support, joint_support

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp([4, 3, 2], "relu")

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Wrapped().double()
    with torch.no_grad():
        model.body[0].bias.fill_(10.0)
    X = torch.rand(8, 4, dtype=torch.float64) + 0.5
    X[:4, 0] = 0.0
    X[4:, 1] = 0.0
    result = hessian(model, nn.CrossEntropyLoss(), (X, torch.randint(0, 2, (8,))))
    assert joint_support(result.problem, result.parameters) is None
    assert first_layer_support(result.problem, result.parameters) is not None
    assert structure_report(result).totals()["H"] == {DISJOINT: 18}  # the same zeros as above


def test_disjoint_support_is_not_claimed_with_a_user_loss_that_may_couple_samples():
    torch.manual_seed(0)
    model = mlp([4, 3, 2], "relu").double()
    with torch.no_grad():
        model[0].bias.fill_(10.0)
    X = torch.rand(8, 4, dtype=torch.float64) + 0.5
    X[:4, 0] = 0.0
    X[4:, 1] = 0.0

    def loss(z, y):  # separates over samples, but nothing proves that to hesskit
        return ((z - y) ** 2).mean()

    result = hessian(model, loss, (X, torch.randn(8, 2, dtype=torch.float64)))
    report = structure_report(result)
    assert DISJOINT not in report.totals()["H"]
    assert count(report, "0.weight", "0.weight", "H", "unexplained") == 18


@pytest.mark.parametrize(("activation", "seed"), [("relu", 0), ("relu", 1), ("leaky_relu", 0)])
def test_support_claims_are_sound_on_a_deeper_chain_with_kinks_and_sparse_data(seed, activation):
    """Every entry the factors call zero is exactly zero in float64 H, G and R, and in each
    sample's terms; integer weights and data put pre-activations exactly on the kink (where
    leaky ReLU has x = 0 but s ≠ 0: R keeps s, not x, as a factor)."""
    from hesskit.dense.support import joint_support

    torch.manual_seed(seed)
    sizes = [5, 4, 3, 3]
    model = mlp(sizes, activation).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape).double())
        model[2].weight[0], model[2].bias[0] = 0.0, 0.0  # a_2[0] = 0: x = 0 but leaky s ≠ 0
    X = torch.randint(-1, 2, (10, 5)).double() * (torch.rand(10, 5) < 0.5)
    y = torch.randint(0, 3, (10,))
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    support = joint_support(result.problem, result.parameters)
    assert support is not None
    brute = per_sample_supports(result, model, X, y, nn.CrossEntropyLoss(reduction="sum"))
    layout, claimed = result.layout, 0
    for part in "HGR":
        for rows in layout.names:
            for columns in layout.names:
                free = ~support.possible(part, rows, columns)
                rs, cs = layout.slice(rows), layout.slice(columns)
                assert torch.all(result.matrix(part)[rs, cs][free] == 0)
                assert not torch.any(brute[part][rs, cs][free])
                claimed += int(free.sum())
    assert claimed > 0


# --- the demo network: no unexplained zero, and its table at 80 columns -------------------


@pytest.fixture(scope="module")
def demo_report():
    from hesskit.cli.main import build_parser
    from hesskit.cli.model_spec import problem_from_args
    from hesskit.dense import hessian_of

    args = build_parser().parse_args(
        ["hessian", "--layers", "64,12,10", "--activation", "relu", "--samples", "256"]
    )
    return structure_report(hessian_of(problem_from_args(args), split=True))


def test_demo_network_has_no_unexplained_zero_in_any_block(demo_report):
    for block in demo_report.blocks:
        for part in "HGR":
            assert "unexplained" not in block.zero_reasons[part], (block.rows, block.columns)
    assert count(demo_report, "0.weight", "0.weight", "H") == 92010  # the unexplained
    assert demo_report.totals()["H"][DISJOINT] == 105606
    assert demo_report.totals()["R"][DISJOINT] == 340


def test_demo_structure_table_fits_80_columns_and_never_splits_a_number(demo_report):
    from rich.console import Console

    from hesskit.cli.cmd_hessian import SHORT_REASONS, _table

    console = Console(width=80, record=True)
    console.print(_table(demo_report))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    tokens = [line.split() for line in lines]

    def on_one_line(row):
        return any(t[k : k + len(row)] == row for t in tokens for k in range(len(t) - len(row) + 1))

    header = [line for line in tokens if line[:2] == ["block", "zeros"]]
    assert len(header) == 1
    reasons = [next(r for r, s in SHORT_REASONS.items() if s == h) for h in header[0][2:]]
    assert DISJOINT in reasons and "unexplained" in reasons
    for block in demo_report.blocks:
        assert on_one_line([f"{block.shape[0]}x{block.shape[1]}", f"{block.norm:.1e}"])
        for part in "HGR":
            counts = block.zero_reasons[part]
            row = [str(counts.get(r, 0) or "-") for r in reasons]
            assert on_one_line([part, str(block.zeros[part]), *row]), (block.rows, part)
    text = " ".join(lines)
    for reason in reasons:
        assert f"{SHORT_REASONS[reason]}:" in text  # the legend names every column
