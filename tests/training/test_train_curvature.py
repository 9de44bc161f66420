"""`hesskit train --track-curvature`: records at the due steps, the sharpness against a dense
eigensolver on the fixed batch, no change to the training, resume without a lost or repeated
line, one-line errors, the page's figure."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from hesskit.cli.main import main
from hesskit.training.checkpoint import load_checkpoint
from hesskit.training.curvature_tracking import fixed_batch_indices

MODULE = '''
import torch
from torch import nn


def data(n=40, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator, dtype=dtype)
    return x, torch.randn(n, 2, generator=generator, dtype=dtype)


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, nn.MSELoss(), data()


def with_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    return model, nn.MSELoss(), data(dtype=torch.float32)
'''


@pytest.fixture
def spec(tmp_path, monkeypatch):
    (tmp_path / "tiny_models.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return lambda name: f"tiny_models:{name}"


def train(spec, out, *extra, model="tiny"):
    argv = ["train", "--model", spec(model), "--optimizer", "sgd", "--lr", "0.3",
            "--batch-size", "8", "--no-progress", "--out", str(out), *extra]
    return main(argv)


def curvature_lines(out, kind="measurement"):
    lines = [json.loads(line) for line in (out / "curvature.jsonl").read_text().splitlines()]
    return [line for line in lines if line["kind"] == kind]


TRACK = ["--track-curvature", "--curvature-every", "3", "--curvature-batch-size", "16"]


def test_records_at_the_due_steps_with_finite_values_and_the_page_figure(spec, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    assert train(spec, out, "--iterations", "7", *TRACK, "--curvature-k", "2",
                 "--curvature-quantities", "sharpness,top-k,trace,blocks") == 0
    lines = curvature_lines(out)
    assert [line["iteration"] for line in lines] == [0, 3, 6]
    for line in lines:
        values = [line["sharpness"], *line["top_k"], line["trace"], *line["blocks"].values()]
        assert len(line["top_k"]) == 2 and set(line["blocks"]) == {"0", "2"}
        assert all(math.isfinite(v) for v in values)
        assert line["products"] > 0 and line["seconds"] > 0 and 0 < line["overhead"] < 1
        # the registry's sgd: Nesterov momentum 0.9, threshold (2 + 2β)/((1 + 2β)η)
        assert line["threshold"] == pytest.approx(3.8 / (2.8 * 0.3)) and line["lr"] == 0.3
    assert [line["warm"] for line in lines] == [False, True, True]
    (summary,) = curvature_lines(out, "summary")
    assert summary["measurements"] == 3 and 0 < summary["overhead"] < 1
    stdout = capsys.readouterr().out
    assert "curvature: 3 measurements took" in stdout and "% of the wall time" in stdout
    page = (out / "index.html").read_text()
    assert 'id="curvature"' in page and "data:image/png;base64," in page and "2/η" in page
    assert (out / "curvature.png").read_bytes().startswith(b"\x89PNG")


def _dense_hessian(model, loss, inputs, targets) -> torch.Tensor:
    """∇²ℓ of the flat parameter vector, by torch.autograd.functional.hessian (float64)."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def objective(theta):
        pieces = torch.split(theta, sizes)
        values = {n: v.reshape(s) for n, v, s in zip(names, pieces, shapes, strict=True)}
        return loss(torch.func.functional_call(model, values, (inputs,)), targets)

    return torch.autograd.functional.hessian(objective, flat)


def test_sharpness_and_trace_equal_the_dense_hessian_of_the_fixed_batch(spec, tmp_path):
    out = tmp_path / "run"
    assert train(spec, out, "--iterations", "6", "--track-curvature", "--curvature-every", "3",
                 "--curvature-batch-size", "10", "--curvature-k", "2",
                 "--curvature-quantities", "top-k,trace", "--seed", "3") == 0
    import tiny_models

    model, loss, (X, Y) = tiny_models.tiny()
    batch = fixed_batch_indices(40, 10, 3)  # 10 of the 40 samples, drawn with the seed
    initial = _dense_hessian(model, loss, X[batch], Y[batch])
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    H = _dense_hessian(model, loss, X[batch], Y[batch])
    top = torch.linalg.eigvalsh(H).flip(0)
    last = curvature_lines(out)[-1]
    assert last["iteration"] == 6
    assert last["sharpness"] == pytest.approx(float(top[0]), rel=1e-3)
    assert last["top_k"] == pytest.approx(top[:2].tolist(), rel=1e-3)
    assert abs(last["trace"] - float(H.trace())) <= 5 * last["trace_stderr"] + 1e-9
    # the test would notice the wrong batch (the whole set) or parameters (the initial ones)
    whole = float(torch.linalg.eigvalsh(_dense_hessian(model, loss, X, Y))[-1])
    for wrong in (whole, float(torch.linalg.eigvalsh(initial)[-1])):
        assert abs(wrong - last["sharpness"]) > 1e-2 * abs(wrong)


def test_tracking_leaves_the_training_bitwise_unchanged(spec, tmp_path):
    plain, tracked = tmp_path / "plain", tmp_path / "tracked"
    extra = ["--iterations", "7", "--eval-every", "3"]
    assert train(spec, plain, *extra, model="with_norm") == 0
    assert train(spec, tracked, *extra, *TRACK, "--curvature-quantities",
                 "sharpness,trace,blocks", model="with_norm") == 0
    one, two = (load_checkpoint(out / "checkpoint.pt") for out in (plain, tracked))
    assert "running_mean" in "".join(one["model"])  # BatchNorm's buffers are compared too
    for key, value in one["model"].items():
        assert torch.equal(value, two["model"][key]), key
    assert torch.equal(one["rng"]["torch"], two["rng"]["torch"])
    losses = [[json.loads(line).get("loss") for line in (out / "log.jsonl").open()]
              for out in (plain, tracked)]
    assert losses[0] == losses[1]
    assert not (plain / "curvature.jsonl").exists()


def test_resume_continues_the_log_without_a_lost_or_repeated_line(spec, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    track = [*TRACK, "--curvature-quantities", "top-k,trace", "--curvature-k", "2"]
    assert train(spec, whole, "--iterations", "10", *track) == 0
    assert train(spec, parts, "--iterations", "4", "--checkpoint-every", "2", *track) == 0
    with (parts / "curvature.jsonl").open("a") as stream:  # measured after the checkpoint
        stream.write(json.dumps({"kind": "measurement", "iteration": 6}) + "\n")
    assert train(spec, parts, "--iterations", "10", "--resume", *track) == 0
    keys = ("iteration", "sharpness", "top_k", "trace", "products", "warm", "threshold")
    expected, got = ([{k: line[k] for k in keys} for line in curvature_lines(out)]
                     for out in (whole, parts))
    assert [line["iteration"] for line in got] == [0, 3, 6, 9]
    assert got == expected  # the warm start continues from the checkpointed eigenvector
    assert len(curvature_lines(parts, "summary")) == 1
    assert len(curvature_lines(parts, "header")) == 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--track-curvature", "--curvature-every", "0"], "'0' must be at least 1"),
    (["--track-curvature", "--curvature-quantities", "sharpness,curl"],
     "unknown curvature quantity 'curl'"),
    (["--track-curvature", "--curvature-matrix", "fisher"], "invalid choice: 'fisher'"),
    (["--curvature-k", "3"], "--curvature-k needs --track-curvature"),
])
def test_bad_values_exit_2_with_one_line(extra, message, spec, tmp_path, capsys):
    try:
        code = train(spec, tmp_path / "run", "--iterations", "2", *extra)
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_resume_with_other_curvature_settings_is_refused_in_one_line(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(spec, out, "--iterations", "3", *TRACK) == 0
    capsys.readouterr()
    assert train(spec, out, "--iterations", "5", "--resume", *TRACK,
                 "--curvature-every", "2") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "every 3 → 2" in lines[0], lines
    assert train(spec, out, "--iterations", "5", "--resume") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the run tracked curvature" in lines[0], lines


def test_the_gauss_newton_matrix_is_measured_when_asked(spec, tmp_path):
    out = tmp_path / "run"
    assert train(spec, out, "--iterations", "3", *TRACK, "--curvature-matrix", "ggn") == 0
    header = json.loads((out / "curvature.jsonl").read_text().splitlines()[0])
    lines = curvature_lines(out)
    assert header["matrix"] == "ggn" and [line["iteration"] for line in lines] == [0, 3]
    assert all(line["sharpness"] > 0 and line["trace"] > 0 for line in lines)  # G ⪰ 0
