"""Named benchmark problems: architectures, Martens' sparse initialisation, loss and errors."""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.problems import (
    PROBLEM_NAMES,
    autoencoder_squared_error,
    build_model,
    classification_error,
    make_problem,
)

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HAS_MNIST = (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HESSKIT_DATA_DIR", raising=False)


def linear_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def sizes_of(model):
    layers = linear_layers(model)
    return [layers[0].in_features] + [layer.out_features for layer in layers]


def test_mnist_autoencoder_architecture_and_parameter_count():
    model = build_model("mnist-autoencoder")
    assert sizes_of(model) == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    # By hand: weights 2·(784·1000 + 1000·500 + 500·250 + 250·30) = 2·1,416,500 = 2,833,000;
    # biases (1000+500+250+30) + (250+500+1000+784) = 1,780 + 2,534 = 4,314.
    assert sum(p.numel() for p in model.parameters()) == 2_833_000 + 4_314 == 2_837_314


def test_curves_autoencoder_architecture_and_parameter_count():
    model = build_model("curves-autoencoder")
    assert sizes_of(model) == [784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784]
    # Weights 2·(313,600 + 80,000 + 20,000 + 5,000 + 1,250 + 150) = 840,000;
    # biases (400+200+100+50+25+6) + (25+50+100+200+400+784) = 781 + 1,559 = 2,340.
    assert sum(p.numel() for p in model.parameters()) == 842_340


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("digits-autoencoder", [64, 32, 8, 32, 64]),
        ("digits-classifier", [64, 32, 32, 10]),
        ("mnist1d-classifier", [40, 64, 64, 10]),
    ],
)
def test_small_architectures(name, sizes):
    assert sizes_of(build_model(name)) == sizes


def test_autoencoder_activations_sigmoid_except_code_and_output():
    kinds = [type(m).__name__ for m in build_model("mnist-autoencoder")]
    # L = Linear, S = Sigmoid: the 30-unit code layer and the output layer are linear.
    assert "".join(k[0] for k in kinds) == "LSLSLSLLSLSLSL"


def test_classifier_has_relu_between_layers_and_logits_out():
    kinds = [type(m).__name__ for m in build_model("digits-classifier")]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_sparse_init_has_exactly_15_normal_incoming_weights_and_zero_biases():
    model = build_model("curves-autoencoder", seed=3, dtype=torch.float64)
    nonzero_values = []
    for layer in linear_layers(model):
        expected = min(15, layer.in_features)
        counts = (layer.weight != 0).sum(dim=1)
        assert (counts == expected).all(), f"layer {layer} has rows with {counts.unique()}"
        assert (layer.bias == 0).all()
        nonzero_values.append(layer.weight[layer.weight != 0])
    values = torch.cat(nonzero_values).detach()
    n = values.numel()  # 15 per unit for most units: about 23,000 draws
    assert n > 20_000
    # N(0, 1): mean within 5 standard errors, variance within 5 of its standard errors √(2/n).
    assert abs(float(values.mean())) < 5 / math.sqrt(n)
    assert abs(float(values.var()) - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(float((values**4).mean()) - 3.0) < 0.3  # the normal's kurtosis, loosely


def test_layers_with_fewer_than_15_inputs_use_all_of_them():
    decoder_first = linear_layers(build_model("curves-autoencoder"))[6]  # 6 -> 25
    assert decoder_first.in_features == 6
    assert (decoder_first.weight != 0).all()


def test_same_seed_same_model_other_seed_other_model():
    a = build_model("digits-autoencoder", seed=4)
    b = build_model("digits-autoencoder", seed=4)
    c = build_model("digits-autoencoder", seed=5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_building_a_model_leaves_the_global_torch_rng_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    build_model("digits-classifier")
    assert torch.equal(torch.rand(3), expected)


def _tiny_autoencoder():
    """A 2 → 2 'autoencoder' with chosen weights, so σ(z) can be worked out by hand."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, 1.0]))
    return model


def test_autoencoder_error_is_per_case_sum_of_squares_not_halved():
    model = _tiny_autoencoder()
    X = torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)

    def sigmoid(t):
        return 1 / (1 + math.exp(-t))

    # Case 1: z = (1, 1.5); case 2: z = (0.5 − 2, 0.25 + 1) = (−1.5, 1.25).
    case1 = (sigmoid(1.0) - 1.0) ** 2 + (sigmoid(1.5) - 0.0) ** 2
    case2 = (sigmoid(-1.5) - 0.5) ** 2 + (sigmoid(1.25) - 1.0) ** 2
    assert autoencoder_squared_error(model, X, X) == pytest.approx((case1 + case2) / 2, rel=1e-14)


@torch.no_grad()
def test_autoencoder_loss_is_cross_entropy_summed_over_pixels_mean_over_cases():
    problem = make_problem("digits-autoencoder", dtype=torch.float64)
    model = _tiny_autoencoder()
    X = torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    z = [[1.0, 1.5], [-1.5, 1.25]]

    def cross_entropy(target, logit):
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    per_case = [sum(cross_entropy(X[i, j].item(), z[i][j]) for j in range(2)) for i in range(2)]
    # −[x log p + (1−x) log(1−p)] = softplus(z) − x z: the two forms agree to rounding.
    assert float(problem.loss(model(X), X)) == pytest.approx(sum(per_case) / 2, rel=1e-13)
    torch_sum = nn.BCEWithLogitsLoss(reduction="sum")(model(X), X) / 2
    assert float(problem.loss(model(X), X)) == pytest.approx(float(torch_sum), rel=1e-13)


@torch.no_grad()
def test_weight_penalty_is_half_lambda_times_squared_norm_of_all_parameters():
    problem = make_problem("digits-autoencoder", dtype=torch.float64)
    squares = sum(float((p.detach().numpy() ** 2).sum()) for p in problem.model.parameters())
    assert float(problem.penalty()) == pytest.approx(0.5 * 1e-5 * squares, rel=1e-12)
    X, y = problem.train
    expected = float(problem.loss(problem.model(X), y)) + 0.5 * 1e-5 * squares
    assert float(problem.objective(X, y)) == pytest.approx(expected, rel=1e-12)


def test_classification_error_counts_wrong_argmax():
    model = nn.Identity()
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    assert classification_error(model, logits, labels) == 0.5


def test_digits_autoencoder_problem_targets_are_the_inputs():
    problem = make_problem("digits-autoencoder")
    assert problem.train[0] is problem.train[1] and problem.test[0] is problem.test[1]
    assert problem.weight_decay == 1e-5
    assert isinstance(problem.loss, nn.Module)
    assert problem.error_fn is autoencoder_squared_error


def test_digits_classifier_problem():
    problem = make_problem("digits-classifier", seed=1)
    X, y = problem.train
    assert X.shape == (1438, 64) and y.dtype == torch.int64
    assert isinstance(problem.loss, nn.CrossEntropyLoss) and problem.weight_decay == 0.0
    error = problem.error_fn(problem.model, *problem.test)
    assert 0.0 <= error <= 1.0


def test_mnist1d_classifier_problem():
    problem = make_problem("mnist1d-classifier")
    assert problem.train[0].shape == (4000, 40) and problem.test[0].shape == (1000, 40)


def test_curves_autoencoder_reads_the_real_file_when_given(tmp_path):
    rng = np.random.default_rng(0)
    scipy.io.savemat(
        tmp_path / "digs3pts_1.mat",
        {"bdata": rng.uniform(size=(8, 784)), "bdatatest": rng.uniform(size=(4, 784))},
    )
    problem = make_problem("curves-autoencoder", data_dir=tmp_path)
    assert problem.weight_decay == 2e-5
    assert problem.train[0].shape == (8, 784)
    assert "original digs3pts_1.mat" in problem.description


@pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST files not in {SHARED_DATA} (CI has them)")
def test_mnist_autoencoder_problem():
    problem = make_problem("mnist-autoencoder", data_dir=SHARED_DATA)
    assert problem.weight_decay == 1e-5
    assert problem.train[0].shape == (60000, 784) and problem.test[0].shape == (10000, 784)


def test_unknown_problem_lists_the_names():
    with pytest.raises(
        InvalidArgumentError,
        match=r"unknown problem 'faces-autoencoder'; choose one of curves-autoencoder",
    ):
        make_problem("faces-autoencoder")
    assert len(PROBLEM_NAMES) == 5


def test_integer_dtype_is_rejected():
    with pytest.raises(InvalidArgumentError, match="floating-point torch dtype"):
        build_model("digits-classifier", dtype=torch.int32)
