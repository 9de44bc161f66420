"""``--model`` may return a Hugging Face model with its dict batches and ``CausalLMLoss``:
every model command runs it unwrapped, and the loss ``train`` reports is the model's own."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from hesskit.cli.main import main

pytest.importorskip("transformers")

MODULE = '''
import torch
import transformers

from hesskit.losses import CausalLMLoss

transformers.logging.set_verbosity_error()


def batches():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 16, (6, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    labels = torch.where(mask.bool(), ids, -100)
    return [({"input_ids": ids[:4], "attention_mask": mask[:4]}, labels[:4]),
            ({"input_ids": ids[4:], "attention_mask": mask[4:]}, labels[4:])]


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double()  # train mode, dropout 0.1
    return model, CausalLMLoss(), batches()
'''


@pytest.fixture
def spec(tmp_path, monkeypatch):
    (tmp_path / "hf_models.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    return "hf_models:gpt2"


@pytest.mark.parametrize("command", [
    ["spectrum", "--top", "1", "--probes", "2", "--density-probes", "1", "--density-steps", "4"],
    ["diagonal", "--steps", "0", "--probes", "2"],
    ["train", "--optimizer", "adam", "--iterations", "2", "--batch-size", "3", "--no-progress"],
])
def test_every_model_command_runs_a_hugging_face_model(command, spec, tmp_path, capsys):
    code = main([*command, "--model", spec, "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err


def test_train_reports_the_models_own_causal_lm_loss(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    import hf_models

    model, _, data = hf_models.gpt2()
    model.eval()  # the loss hesskit reports is that of the deterministic network
    with torch.no_grad():
        tokens = sum(int((labels[:, 1:] != -100).sum()) for _, labels in data)
        expected = sum(
            float(model(**inputs, labels=labels).loss) * int((labels[:, 1:] != -100).sum())
            for inputs, labels in data
        ) / tokens
    code = main(["train", "--model", spec, "--optimizer", "adam", "--iterations", "1",
                 "--batch-size", "3", "--no-progress", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    lines = (tmp_path / "o" / "log.jsonl").read_text().splitlines()
    start = next(r for r in map(json.loads, lines) if r.get("iteration") == 0)
    # the loss on all the data before any step; HF's own loss runs in float32
    assert abs(start["train_error"] - expected) <= 1e-6 * abs(expected)
