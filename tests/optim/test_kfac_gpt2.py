"""K-FAC on GPT-2 from a tiny ``transformers.GPT2Config`` (issue 22): its layers found from
the modules (Conv1D, the tied wte/lm_head, wpe), every other parameter on the documented
uncovered rule, and steps that lower the loss of a batch."""

from __future__ import annotations

import torch
from torch import nn

from closures import batch_closure
from hesskit.losses import CausalLMLoss
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.products import UNCOVERED_RULE


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(config)


def test_kfac_covers_gpt2s_layers_and_says_how_in_its_repr(capsys):
    model = gpt2()
    opt = KFAC(model.parameters(), model=model, loss=CausalLMLoss(), verbose=True)
    printed = capsys.readouterr().out
    kinds = {b.weight: [u.kind.name for u in b.uses] for b in opt.blocks}
    assert kinds["transformer.wte.weight"] == ["EMBEDDING", "LINEAR"]  # lm_head is tied
    assert kinds["transformer.wpe.weight"] == ["EMBEDDING"]
    assert kinds["transformer.h.0.attn.c_attn.weight"] == ["CONV1D"]
    assert len(opt.blocks) == 2 + 2 * 4
    text = repr(opt)
    assert text.endswith(printed.strip()) and "tied, 2 uses summed" in text
    assert f"transformer.ln_f.weight (32,): uncovered: {UNCOVERED_RULE}" in text


def test_kfac_steps_gpt2_lowering_the_loss_and_moving_the_uncovered_parameters():
    model = gpt2()
    ids = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(0))
    opt = KFAC(model.parameters(), model=model, loss=CausalLMLoss())
    opt_closure = batch_closure(opt, {"input_ids": ids}, ids.clone())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = [float(opt.step(opt_closure)) for _ in range(3)]
    assert opt.kfac_state["nonfinite_rejections"] == 0 and losses[-1] < losses[0]
    for name, p in model.named_parameters():  # nothing frozen: LayerNorm gains move too
        assert not torch.equal(p, before[name]), name
