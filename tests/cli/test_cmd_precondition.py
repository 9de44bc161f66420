"""`hesskit precondition`: the files it writes, and every bad input as one line with exit 2."""

from __future__ import annotations

import json
import textwrap

import pytest

from hesskit.cli.main import main

USER_MODULE = '''
import torch
from torch import nn


def tiny():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(), nn.MSELoss(), (x, y)


def linear():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    return nn.Linear(3, 2).double(), nn.MSELoss(), (x, x[:, :2])


def raises():
    raise ValueError("no data here")
'''

SMALL = ["--steps", "2", "--every", "1", "--batch-size", "8", "--max-products", "20",
         "--cg-maxiter", "20", "--top-k", "2"]
HUGE = "1" + "0" * 30


@pytest.fixture()
def models(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HESSKIT_TRACEBACK", raising=False)
    path = tmp_path / "precondition_models.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return str(path)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits from inside parse_args
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reject_nan(text: str) -> None:
    raise ValueError(f"{text} in strict JSON")


def test_writes_strict_json_both_plots_and_the_report(models, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, err = run_cli(["precondition", "--model", f"{models}:tiny", "--optimizers",
                                  "sgd,adam", "--lr", "adam=0.01", *SMALL, "--out", str(out)],
                                 capsys)
    assert code == 0, err
    data = json.loads((out / "preconditioner.json").read_text(), parse_constant=reject_nan)
    assert data["schema"] == "hesskit.preconditioner/1"
    assert [run["optimizer"] for run in data["runs"]] == ["sgd", "adam"]
    assert data["runs"][1]["lr"] == 0.01 and data["runs"][0]["lr"] == 0.01  # sgd's default
    adam = data["runs"][1]["records"][-1]
    assert adam["step"] == 2 and [s["layer"] for s in adam["scopes"]] == ["model", "0", "2"]
    assert len(adam["scopes"][0]["curvature"]["top"]) == 2
    for name in ("preconditioner.png", "preconditioner_layers.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.txt").read_text()
    assert report.splitlines()[0] in printed
    kappa = adam["scopes"][0]["preconditioned"]["condition_damped"]
    assert f"{kappa:.3g}" in report


def test_no_layers_measures_the_model_only(models, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["precondition", "--model", f"{models}:tiny", "--optimizers", "adam",
                            "--no-layers", *SMALL, "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "preconditioner.json").read_text())
    assert [s["layer"] for s in data["runs"][0]["records"][0]["scopes"]] == ["model"]
    assert not (out / "preconditioner_layers.png").exists()


def bad_cases() -> list[tuple[str, list[str]]]:
    base = ["precondition", "--model", "{models}:tiny", *SMALL, "--out", "{out}"]
    numeric = {
        "--steps": ["0", "-1", "abc", "1.5", HUGE],
        "--every": ["0", "-1", "x", HUGE],
        "--batch-size": ["0", "-3", "1.5"],
        "--seed": ["-1", str(2**63)],
        "--damping": ["0", "-1", "nan", "inf", "abc", "1e30"],
        "--top-k": ["0", "1001", "2.5"],
        "--max-products": ["0", HUGE],
        "--tol": ["0", "1", "-0.1", "nan"],
        "--cg-maxiter": ["0", "-1"],
        "--probes": ["0"],
        "--lr": ["0", "-1", "nan", "abc", "adam=", "=1", "adam=0", "adam=1e30", "adam=x,sgd=1"],
        "--optimizers": ["", ",", "adam,,sgd", "adam,adam", "lion", "lbfgs", "hf"],
        "--dtype": ["float16"],
    }
    cases = [(f"{option}={value!r}", [*base, f"{option}={value}"])
             for option, values in numeric.items() for value in values]
    cases += [
        ("lr for an optimizer not chosen", [*base, "--optimizers", "adam", "--lr", "sgd=0.1"]),
        ("unwritable out", [*base, "--out", "{models}/out"]),
        ("unknown problem", ["precondition", "--problem", "nope", *SMALL]),
        ("problem and model", [*base, "--problem", "digits-autoencoder"]),
        ("model raises", ["precondition", "--model", "{models}:raises", *SMALL]),
        ("missing model function", ["precondition", "--model", "{models}:nope", *SMALL]),
        ("diverging lr", ["precondition", "--model", "{models}:linear", "--optimizers", "sgd",
                          "--lr", "1e6", "--steps", "80", "--every", "1000", "--out", "{out}"]),
    ]
    return cases


CASES = bad_cases()


@pytest.mark.parametrize("argv", [argv for _, argv in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_on_stderr_and_exit_2(argv, models, tmp_path, capsys):
    fields = {"models": models, "out": str(tmp_path / "out")}
    code, _, err = run_cli([part.format(**fields) for part in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code == 2 and len(lines) == 1, (code, err)


def test_an_optimizer_without_an_adapter_is_named_before_training(models, tmp_path, capsys):
    code, printed, err = run_cli(["precondition", "--model", f"{models}:tiny", "--optimizers",
                                  "adam,lbfgs", *SMALL, "--out", str(tmp_path)], capsys)
    assert code == 2 and "lbfgs: no preconditioner adapter for LBFGS" in err
    assert "measured" not in printed
