"""The Hugging Face zoo's oracles are right: checked against finite differences and torch.

A wrong oracle would let a wrong hesskit pass, so each oracle is compared here with
central differences in float64 (ε = 1e-5: truncation ε² ≈ 1e-10 times third derivatives
of order one, rounding 1e-16/ε ≈ 1e-11, so agreement to 1e-6 relative is a real check) on
models that are float64 throughout (GPT-2 with padding and tied weights; the train-mode
BatchNorm ResNet), and the twins against the models they stand for.
"""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("transformers")

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention

from hf_zoo.models import CASES, make, one_torch_thread  # noqa: F401 - a fixture
from hf_zoo.reference import Oracle, central_difference, relative_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FD_CASES = ["gpt2_eager", "resnet_train"]
EPS = 1e-5
FD_RTOL = 1e-6


def _directions(n: int, k: int, seed: int) -> torch.Tensor:
    """``[n, k]`` fixed random unit directions (unit, so that ε is the step length)."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(n, k, generator=g, dtype=torch.float64)
    return V / V.norm(dim=0)


def _oracle(name: str, names=None) -> Oracle:
    case = make(name)
    return Oracle(case.reference_model, case.loss_kind, case.data, names)


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("resnet")])
def test_dropout_free_twin_equals_the_model_in_eval_mode(name):
    case = make(name)
    model = copy.deepcopy(case.model).eval()
    for inputs, _ in case.data:
        with torch.no_grad():
            want = model(**inputs).logits
            got = case.reference_model(**inputs).logits
        assert case.reference_model.training, f"{name}: the twin is not in train mode"
        assert torch.equal(got, want), f"{name}: twin differs by {(got - want).abs().max():.3g}"


@pytest.mark.parametrize("name", ["resnet_train", "resnet_eval"])
def test_resnet_twin_equals_the_model_in_its_own_mode(name):
    """The train-mode twin normalises with batch statistics like the model (on a copy, whose
    running statistics the forward updates)."""
    case = make(name)
    model = copy.deepcopy(case.model)
    for inputs, _ in case.data:
        with torch.no_grad():
            want = model(**inputs).logits
            got = case.reference_model(**inputs).logits
        assert relative_error(got, want) <= 1e-14, f"{name}: twin differs"


@pytest.mark.parametrize("name", list(CASES))
def test_twin_has_every_dropout_probability_zero_and_the_model_none(name):
    case = make(name)
    twin_config = case.reference_model.config.to_dict()
    dropouts = {k: v for k, v in twin_config.items()
                if any(w in k for w in ("dropout", "pdrop", "layerdrop")) and isinstance(v, float)}
    assert all(v == 0.0 for v in dropouts.values()), f"{name}: {dropouts}"
    for module in case.reference_model.modules():
        if isinstance(module, torch.nn.Dropout):
            assert module.p == 0.0, f"{name}: {module} in the twin"
    if not name.startswith("resnet"):
        model_config = case.model.config.to_dict()
        assert any(model_config[k] > 0 for k in dropouts), f"{name}: the model has no dropout"


@pytest.mark.parametrize("name", list(CASES))
def test_hand_written_loss_equals_torch_cross_entropy_over_all_tokens(name):
    """L is the mean over the kept tokens of ALL batches (not a mean of batch means)."""
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data)
    logits, labels = [], []
    with torch.no_grad():
        for inputs, targets in case.data:
            z = case.reference_model(**inputs).logits
            if case.loss_kind == "causal_lm":
                z, targets = z[:, :-1], targets[:, 1:]
            logits.append(z.reshape(-1, z.shape[-1]))
            labels.append(targets.reshape(-1))
        want = F.cross_entropy(torch.cat(logits), torch.cat(labels), ignore_index=-100)
        got = oracle.loss()
    assert relative_error(got, want) <= 1e-14, f"{name}: {float(got)} != {float(want)}"


@pytest.mark.parametrize("name", FD_CASES)
def test_gradient_equals_central_differences_of_the_loss(name):
    oracle = _oracle(name)
    V = _directions(oracle.theta.numel(), 3, seed=1)
    want = torch.stack([central_difference(oracle.loss, oracle.theta, v, EPS) for v in V.T])
    got = oracle.gradient() @ V
    assert relative_error(got, want) <= FD_RTOL, f"{name}: {relative_error(got, want):.3g}"


@pytest.mark.parametrize("name", FD_CASES)
def test_hessian_vector_product_equals_central_differences_of_the_gradient(name):
    oracle = _oracle(name)
    for v in _directions(oracle.theta.numel(), 2, seed=2).T:
        want = central_difference(oracle.gradient, oracle.theta, v, EPS)
        error = relative_error(oracle.hessian_vector(v), want)
        assert error <= FD_RTOL, f"{name}: H v relative error {error:.3g}"


@pytest.mark.parametrize("name", FD_CASES)
def test_gauss_newton_bilinear_form_equals_finite_difference_jacobians(name):
    """uᵀ G v = Σ_b (J_b u)ᵀ H_ℓb (J_b v) with J_b u, J_b v central differences of the
    logits and H_ℓb w central differences of the loss's autograd gradient in the logits."""
    oracle = _oracle(name)
    U = _directions(oracle.theta.numel(), 3, seed=3)
    v = _directions(oracle.theta.numel(), 1, seed=4)[:, 0]
    want = torch.zeros(3, dtype=torch.float64)
    for inputs, targets in oracle.data:
        def logits(t, inputs=inputs):
            return oracle.logits(t, inputs)

        def output_gradient(z, targets=targets):
            z = z.detach().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad(oracle.batch_loss(z, targets), z)[0]

        z = logits(oracle.theta).detach()
        Jv = central_difference(logits, oracle.theta, v, EPS)
        HJv = central_difference(output_gradient, z, Jv / Jv.norm(), EPS) * Jv.norm()
        for k, u in enumerate(U.T):
            want[k] += (central_difference(logits, oracle.theta, u, EPS) * HJv).sum()
    got = U.T @ oracle.gauss_newton_vector(v)
    assert relative_error(got, want) <= FD_RTOL, f"{name}: {relative_error(got, want):.3g}"


@pytest.mark.parametrize("name", FD_CASES)
def test_per_sample_gradients_equal_central_differences_of_the_sample_losses(name):
    from hf_zoo.reference import token_terms

    oracle = _oracle(name)
    v = _directions(oracle.theta.numel(), 1, seed=5)[:, 0]

    def sample_losses(theta):
        return torch.cat([token_terms(oracle.logits(theta, x), y, oracle.kind)[0]
                          for x, y in oracle.data])

    want = central_difference(sample_losses, oracle.theta, v, EPS)
    got = oracle.per_sample_gradients() @ v
    assert relative_error(got, want) <= FD_RTOL, f"{name}: {relative_error(got, want):.3g}"


@pytest.mark.parametrize("name", FD_CASES)
def test_dense_block_hessian_times_directions_equals_central_differences_of_the_gradient(name):
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    V = _directions(oracle.theta.numel(), 3, seed=6)
    want = torch.stack([central_difference(oracle.gradient, oracle.theta, v, EPS)
                        for v in V.T], dim=1)
    error = relative_error(oracle.hessian_dense() @ V, want)
    assert error <= FD_RTOL, f"{name}: dense block H relative error {error:.3g}"


@pytest.mark.parametrize("name", FD_CASES)
def test_dense_block_gauss_newton_times_directions_equals_its_jvp_vjp_products(name):
    """The explicit-Jacobian G of a block equals the jvp/vjp products G e_j (checked above
    against finite differences)."""
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    V = _directions(oracle.theta.numel(), 3, seed=7)
    error = relative_error(oracle.gauss_newton_dense() @ V, oracle.gauss_newton_matmat(V))
    assert error <= 1e-12, f"{name}: dense block G relative error {error:.3g}"


def test_forward_mode_jacobian_differs_from_reverse_mode_only_on_the_embedding_padding_row():
    """Why ``Oracle.jacobian_vector`` uses reverse mode only: ``nn.Embedding(padding_idx)``'s
    backward gives the pad row a zero gradient (BERT's pad token 0 occurs in the data), but
    ``torch.func.jvp`` moves it; with the pad row of v zeroed both agree."""
    from torch.func import jvp

    case = make("bert_eager")
    oracle = Oracle(case.reference_model, case.loss_kind, case.data)
    inputs = case.data[0][0]
    v = _directions(oracle.theta.numel(), 1, seed=8)[:, 0]
    embedding = case.reference_model.bert.embeddings.word_embeddings
    assert embedding.padding_idx == 0 and bool((inputs["input_ids"] == 0).any())

    def forward_and_reverse(v):
        _, forward = jvp(lambda t: oracle.logits(t, inputs), (oracle.theta,), (v,))
        return forward, oracle.jacobian_vector(inputs, v)[1]

    assert relative_error(*forward_and_reverse(v)) > 1e-6
    pad_row = oracle.unflatten(v)["bert.embeddings.word_embeddings.weight"][0]
    start = oracle.names.index("bert.embeddings.word_embeddings.weight")
    offset = sum(oracle.sizes[:start])
    v = v.clone()
    v[offset : offset + pad_row.numel()] = 0
    assert relative_error(*forward_and_reverse(v)) <= 1e-14
