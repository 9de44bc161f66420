"""Zero classes of the structure report, each tested where it holds and where it does not."""

import json

import torch
from torch import nn

from hesskit.dense import hessian, structure_report
from hesskit.models import mlp


def build(activation, loss, sizes=(3, 4, 3), samples=10, dead_unit=None, seed=0):
    torch.manual_seed(seed)
    model = mlp(list(sizes), activation).double()
    if dead_unit is not None:
        with torch.no_grad():
            model[0].bias.fill_(5.0)  # the other units are active on some sample
            model[0].bias[dead_unit] = -1e3  # pre-activation < 0 on every sample
    X = torch.randn(samples, sizes[0], dtype=torch.float64)
    y = (
        torch.randint(0, sizes[-1], (samples,))
        if isinstance(loss, nn.CrossEntropyLoss)
        else torch.randn(samples, sizes[-1], dtype=torch.float64)
    )
    result = hessian(model, loss, (X, y))
    return result, structure_report(result)


def find(report, rows, columns):
    return next(b for b in report.blocks if (b.rows, b.columns) == (rows, columns))


def test_last_layer_weights_into_different_outputs_are_zero_under_mse_and_so_classified():
    result, report = build("tanh", nn.MSELoss())
    W = result.block("2.weight", "2.weight").reshape(3, 4, 3, 4)
    for a in range(3):
        for b in range(3):
            if a != b:
                assert torch.all(W[a, :, b, :] == 0)  # by hand: z_a depends on row a only
    block = find(report, "2.weight", "2.weight")
    assert block.zero_reasons["H"]["non_interacting_outputs"] == 3 * 4 * 2 * 4
    assert (
        find(report, "2.bias", "2.weight").zero_reasons["H"]["non_interacting_outputs"] == 3 * 2 * 4
    )


def test_non_interacting_outputs_is_not_claimed_under_cross_entropy():
    result, report = build("tanh", nn.CrossEntropyLoss())
    W = result.block("2.weight", "2.weight").reshape(3, 4, 3, 4)
    assert torch.all(W[0, :, 1, :] != 0)  # softmax couples the outputs
    assert "non_interacting_outputs" not in report.totals().get("H", {})


def test_relu_network_residual_is_zero_within_each_layer_and_h_equals_g_there():
    result, report = build("relu", nn.CrossEntropyLoss())
    for layer in ("0", "2"):
        for rows in ("weight", "bias"):
            for cols in ("weight", "bias"):
                r, c = f"{layer}.{rows}", f"{layer}.{cols}"
                assert torch.all(result.block(r, c, "R") == 0)
                assert torch.equal(result.block(r, c, "H"), result.block(r, c, "G"))
    block = find(report, "0.weight", "0.weight")
    assert block.zero_reasons["R"] == {"linear_in_layer": 12 * 12}
    assert block.residual_share == 0.0 and block.gauss_newton_share == 1.0
    assert torch.any(result.block("2.weight", "0.weight", "R") != 0)  # across layers R ≠ 0


def test_tanh_network_residual_within_a_hidden_layer_is_nonzero_and_not_claimed():
    result, report = build("tanh", nn.CrossEntropyLoss())
    assert torch.all(result.block("0.weight", "0.bias", "R").abs().sum() > 0)
    for rows, cols in [("0.weight", "0.weight"), ("0.bias", "0.weight"), ("0.bias", "0.bias")]:
        assert "linear_in_layer" not in find(report, rows, cols).zero_reasons.get("R", {})
    # the output is linear in the last layer's parameters whatever the activation
    assert find(report, "2.weight", "2.weight").zero_reasons["R"]["linear_in_layer"] > 0


def test_dead_relu_unit_has_zero_rows_and_columns_classified_as_dead():
    result, report = build("relu", nn.CrossEntropyLoss(), dead_unit=1)
    assert [(d.layer, d.unit) for d in report.dead_units] == [("1", 1)]
    layout = result.layout
    rows = [layout.slice("0.weight").start + 1 * 3 + c for c in range(3)]
    rows += [layout.slice("0.bias").start + 1]
    rows += [layout.slice("2.weight").start + k * 4 + 1 for k in range(3)]
    for part in "HGR":
        assert torch.all(result.matrix(part)[rows] == 0)
    totals = report.totals()
    dead = torch.zeros(layout.num_params, dtype=torch.bool)
    dead[rows] = True
    expected = 0  # the report covers each unordered pair of parameter tensors once
    for block in report.blocks:
        r, c = layout.slice(block.rows), layout.slice(block.columns)
        expected += int((dead[r][:, None] | dead[c][None, :]).sum())
    assert totals["H"]["dead_unit"] == expected
    assert "unexplained" not in totals["H"]


def test_no_dead_units_claimed_for_leaky_relu_or_for_saturated_tanh():
    _, leaky = build("leaky_relu", nn.CrossEntropyLoss(), dead_unit=1)
    assert leaky.dead_units == [] and "dead_unit" not in leaky.totals().get("H", {})
    _, saturated = build("tanh", nn.CrossEntropyLoss(), dead_unit=1)
    assert saturated.dead_units == []
    assert "dead_unit" not in saturated.totals()["H"]
    assert saturated.totals()["H"]["unexplained"] > 0  # tanh′(−1000) underflows to 0


def test_report_is_json_serialisable_and_counts_match_the_matrices():
    result, report = build("relu", nn.MSELoss(), dead_unit=0)
    data = json.loads(report.to_json())
    assert data["num_params"] == result.layout.num_params
    zeros = sum(b["zeros"]["H"] for b in data["blocks"] if b["rows"] == b["columns"])
    diagonal_blocks = sum(int((result.block(n, n) == 0).sum()) for n in result.layout.names)
    assert zeros == diagonal_blocks
    for block in data["blocks"]:
        for part, reasons in block["zero_reasons"].items():
            assert sum(reasons.values()) == block["zeros"][part]


def test_relu_residual_between_layers_couples_only_the_same_hidden_unit():
    result, report = build("relu", nn.CrossEntropyLoss(), sizes=(3, 4, 3), samples=30)
    R = result.block("2.weight", "0.weight", "R").reshape(3, 4, 4, 3)  # [k, p, i, j]
    for p in range(4):
        for i in range(4):
            if p != i:
                assert torch.all(R[:, p, i, :] == 0)  # by hand: ∂h_p/∂a_i = 0
    assert torch.all(result.block("2.bias", "0.weight", "R") == 0)
    block = find(report, "2.weight", "0.weight")
    assert block.zero_reasons["R"]["separate_hidden_units"] == 3 * 4 * 3 * 3
    assert "unexplained" not in report.totals()["R"]


def test_separate_hidden_units_is_not_claimed_when_a_curved_activation_follows():
    result, report = build("tanh", nn.CrossEntropyLoss(), sizes=(3, 4, 4, 3), samples=30)
    R = result.block("2.weight", "0.weight", "R").reshape(4, 4, 4, 3)
    assert torch.any(R[:, 0, 1, :] != 0)  # tanh after layer 2 couples different units
    assert "separate_hidden_units" not in find(report, "2.weight", "0.weight").zero_reasons["R"]
    # into the last layer (nothing curved after it) the claim holds and is made
    assert find(report, "4.weight", "2.weight").zero_reasons["R"]["separate_hidden_units"] > 0


def test_weights_from_an_input_feature_zero_on_every_sample_are_classified():
    torch.manual_seed(0)
    model = mlp([3, 4, 2], "tanh").double()
    X = torch.randn(10, 3, dtype=torch.float64)
    X[:, 1] = 0.0
    y = torch.randint(0, 2, (10,))
    result = hessian(model, nn.CrossEntropyLoss(), (X, y))
    report = structure_report(result)
    assert report.zero_input_features == [1]
    rows = [result.layout.slice("0.weight").start + i * 3 + 1 for i in range(4)]
    assert torch.all(result.matrix()[rows] == 0)
    assert find(report, "0.weight", "0.weight").zero_reasons["H"] == {
        "zero_input_feature": 4 * 12 * 2 - 4 * 4
    }
    X[0, 1] = 1e-3  # no longer zero on every sample: no claim, and no zeros to explain
    report = structure_report(hessian(model, nn.CrossEntropyLoss(), (X, y)))
    assert report.zero_input_features == []
    assert "zero_input_feature" not in report.totals().get("H", {})
