"""Models as the ecosystem writes them: keyword inputs from a dict batch, outputs with
``.logits``, a loss that casts, a model that returns its own loss."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.losses import CausalLMLoss
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem
from reference import autograd_hessian


@dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class KeywordModel(nn.Module):
    """forward(input_ids=..., attention_mask=...) -> Output(logits), as HF models."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(7, 4), nn.Linear(4, 7)

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        h = torch.tanh(self.embed(input_ids)) * attention_mask.unsqueeze(-1)
        logits = self.head(h)
        loss = None if labels is None else CausalLMLoss()(logits, labels)
        return Output(logits, loss)


def _batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (3, 5), generator=generator)
    mask = torch.ones(3, 5, dtype=torch.float64)
    mask[0, 3:] = 0
    labels = ids.clone()
    labels[0, 3:] = -100
    return {"input_ids": ids, "attention_mask": mask}, labels


def test_a_dict_of_forward_keywords_is_passed_as_keyword_arguments_and_logits_are_read():
    torch.manual_seed(0)
    model = KeywordModel().double()
    inputs, labels = _batch()
    problem = Problem(model, CausalLMLoss(), (inputs, labels))
    expected = model(**inputs, labels=labels).loss
    assert torch.equal(problem.total_loss(), expected)

    H = torch.autograd.functional.hessian(
        lambda theta: _flat_loss(model, theta, inputs, labels),
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
    )
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(hessian_operator(problem).matmat(eye), H, rtol=1e-9, atol=1e-12)


def _flat_loss(model, theta, inputs, labels):
    params, start = {}, 0
    for name, p in model.named_parameters():
        params[name] = theta[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    logits = torch.func.functional_call(model, params, (), inputs).logits
    shifted, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    return nn.functional.cross_entropy(shifted, targets, ignore_index=-100)


def test_a_model_that_returns_its_loss_is_refused_with_a_sentence():
    class ReturnsLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 2)

        def forward(self, x):
            return self.layer(x).pow(2).mean()

    problem = Problem(ReturnsLoss().double(), lambda out, y: out,
                      (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4)))
    with pytest.raises(InvalidArgumentError, match="returned a 0-d tensor"):
        gauss_newton_operator(problem).diagonal()
    with pytest.raises(InvalidArgumentError, match="returned a 0-d tensor"):
        gauss_newton_operator(problem).trace()


def test_a_loss_that_casts_float64_outputs_to_float32_gets_a_clear_message():
    model = nn.Linear(3, 4).double()
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 4, (6,))

    def float32_cross_entropy(out, target):  # as transformers' loss_function does
        return nn.functional.cross_entropy(out.float(), target)

    problem = Problem(model, float32_cross_entropy, (X, y))
    with pytest.raises(InvalidArgumentError, match="casts the outputs to a lower precision"):
        gauss_newton_operator(problem).diagonal()
    with pytest.raises(InvalidArgumentError, match="casts the outputs to a lower precision"):
        problem.total_loss()


def test_a_dict_that_does_not_name_forward_parameters_stays_one_argument():
    class TakesDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 2)

        def forward(self, batch):
            return self.layer(batch["a"] + batch["b"])

    model = TakesDict().double()
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), ({"a": a, "b": b}, y))
    H = autograd_hessian(nn.Sequential(model.layer), nn.functional.mse_loss, a + b, y)
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(hessian_operator(problem).matmat(eye), H, rtol=1e-9, atol=1e-12)
