"""One training loop for every optimizer of the family (issue 22): the constructor is the
only line that changes. Each reads its batch from the ordinary closure (zero_grad, loss of
the model's output, backward, return), steps finitely, lowers the loss, and a NaN batch
leaves the parameters bitwise unchanged. On an MLP classifier and on GPT-2 from a config."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hesskit
from hesskit.errors import InvalidArgumentError
from hesskit.losses import CausalLMLoss
from hesskit.optim.closure_batch import ClosureBatch

ONE_LINE = {  # the one line a user changes
    "KFAC": lambda m, lf: hesskit.KFAC(m.parameters(), model=m, loss=lf),
    "HessianFree": lambda m, lf: hesskit.HessianFree(m.parameters(), model=m, loss=lf),
    "DampedNewton": lambda m, lf: hesskit.DampedNewton(m.parameters(), model=m, loss=lf),
    "Sophia": lambda m, lf: hesskit.Sophia(m.parameters(), lr=1e-2, model=m, loss=lf),
    "AdaHessian": lambda m, lf: hesskit.AdaHessian(m.parameters(), lr=1e-2, model=m, loss=lf),
    "Shampoo": lambda m, lf: hesskit.Shampoo(m.parameters(), lr=1e-2),
    "AdamW": lambda m, lf: torch.optim.AdamW(m.parameters(), lr=1e-2),
}


def train(optimizer, model, loss_fn, batches):
    """The README's loop, verbatim apart from the data."""
    losses = []
    for inputs, targets in batches:
        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)  # noqa: B023 (called in this iteration)
            loss.backward()
            return loss

        losses.append(float(optimizer.step(closure).detach()))
    return losses


def classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(48, 5, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    return model, nn.CrossEntropyLoss(), [(X, y)] * 12


def gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20,
                                     n_positions=8, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 20, (6, 8), generator=torch.Generator().manual_seed(1))
    return model, CausalLMLoss(), [(ids, ids)] * 6


@pytest.mark.parametrize("name", list(ONE_LINE))
def test_the_same_loop_trains_a_classifier_with_every_optimizer(name):
    model, loss_fn, batches = classifier()
    optimizer = ONE_LINE[name](model, loss_fn)
    losses = train(optimizer, model, loss_fn, batches)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", [n for n in ONE_LINE if n != "DampedNewton"])
def test_the_same_loop_trains_gpt2_with_every_optimizer(name):
    model, loss_fn, batches = gpt2()
    optimizer = ONE_LINE[name](model, loss_fn)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(optimizer, model, loss_fn, batches)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert moved == list(before)  # nothing frozen (LayerNorm gains, wpe, biases)


@pytest.mark.parametrize("name", [n for n in ONE_LINE if n != "AdamW"])
def test_a_nan_batch_leaves_every_parameter_bitwise_unchanged(name):
    model, loss_fn, batches = classifier()
    optimizer = ONE_LINE[name](model, loss_fn)
    train(optimizer, model, loss_fn, batches[:2])
    X, y = batches[0]
    poisoned = X.clone()
    poisoned[3, 1] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    train(optimizer, model, loss_fn, [(poisoned, y)])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_watched_batch_is_the_closures_in_its_form():
    model, loss_fn, _ = gpt2()
    watch = ClosureBatch(model, loss_fn, "test")
    ids = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    value = watch.run(lambda: loss_fn(model(ids, attention_mask=mask), ids))
    inputs, targets = watch.batch
    assert set(inputs) == {"input_ids", "attention_mask"}  # positional named by forward
    assert inputs["input_ids"] is not ids and torch.equal(inputs["input_ids"], ids)
    assert targets.data_ptr() == ids.data_ptr()
    problem = watch.problem([n for n, _ in model.named_parameters()])
    assert float(problem.total_loss()) == pytest.approx(float(value.detach()), rel=1e-6)


@pytest.mark.parametrize("closure, message", [
    (lambda m, lf, X, y: lf(m(X), y) + lf(m(X), y), "called the model 2 times"),
    (lambda m, lf, X, y: nn.functional.cross_entropy(m(X), y), "called loss 0 times"),
    (lambda m, lf, X, y: lf(m(X)[:, :2], y.clamp(max=1)), "something other than the model"),
])
def test_a_closure_it_cannot_read_is_refused_with_one_line(closure, message):
    model, loss_fn, batches = classifier()
    X, y = batches[0]
    optimizer = hesskit.KFAC(model.parameters(), model=model, loss=loss_fn)

    def wrapped():
        optimizer.zero_grad()
        loss = closure(model, loss_fn, X, y)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(InvalidArgumentError, match=message):
        optimizer.step(wrapped)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_model_and_loss_come_together_or_not_at_all():
    model, loss_fn, _ = classifier()
    with pytest.raises(InvalidArgumentError, match="model= and loss= together"):
        hesskit.Sophia(model.parameters(), model=model)
    with pytest.raises(InvalidArgumentError, match="not both"):
        hesskit.HessianFree(model.parameters())
    with pytest.raises(InvalidArgumentError, match=r"must be an nn\.Module"):
        hesskit.KFAC(model.parameters(), model=model, loss=nn.functional.cross_entropy)
    with pytest.raises(InvalidArgumentError, match="parameter of model="):
        hesskit.DampedNewton([nn.Parameter(torch.zeros(2))], model=model, loss=loss_fn)
