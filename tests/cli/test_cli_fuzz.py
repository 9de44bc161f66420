"""Every sub-command's options with bad values: each ends with one line on stderr and exit 2.

The cases run in-process through ``hesskit.cli.main.main``. A case passes when the exit code
is 2 (returned, or raised by argparse as ``SystemExit``), stderr holds exactly one non-empty
line and no "Traceback". Models are tiny and the options that size the work are small, so
that every case that gets past argument parsing fails, or would finish, in well under a
second.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from hesskit.cli.main import main

HUGE = "1" + "0" * 30  # 10**30
SEED_TOO_LARGE = str(2**63)
NOT_NUMBERS = ["abc", "", "1,5", "0x"]
NON_FINITE = ["nan", "inf", "-inf", "1e309"]

TINY = ["--layers", "3,2,2", "--data", "random", "--samples", "4", "--loss", "mse"]
SMALL_SPECTRUM = ["--top", "1", "--probes", "6", "--density-probes", "1", "--density-steps", "3"]
TRAIN = ["train", "--problem", "digits-classifier", "--optimizer", "adam", "--iterations", "1",
         "--no-progress"]
BENCH = ["bench", "--problem", "digits-classifier", "--optimizers", "adam", "--no-progress"]
PRECONDITION = ["precondition", "--problem", "digits-classifier", "--optimizers", "adam",
                "--steps", "1", "--top-k", "1", "--max-products", "5", "--cg-maxiter", "5",
                "--no-layers"]

USER_MODULE = '''
import torch
from torch import nn


def good():
    x = torch.randn(6, 3, dtype=torch.float64)
    return nn.Linear(3, 2).double(), nn.MSELoss(), (x, torch.randn(6, 2, dtype=torch.float64))


def raises():
    raise ValueError("the data folder is empty")


def shape_mismatch():
    x = torch.randn(6, 3, dtype=torch.float64)
    return nn.Linear(4, 2).double(), nn.MSELoss(), (x, torch.randn(6, 2, dtype=torch.float64))


class Reshapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x).view(5, -1)


def forward_raises():
    x = torch.randn(6, 3, dtype=torch.float64)
    return Reshapes().double(), nn.MSELoss(), (x, torch.randn(6, 2, dtype=torch.float64))


def nan_data():
    x = torch.randn(6, 3, dtype=torch.float64)
    x[2, 1] = float("nan")
    return nn.Linear(3, 2).double(), nn.MSELoss(), (x, torch.randn(6, 2, dtype=torch.float64))


def two_things():
    return nn.Linear(3, 2), nn.MSELoss()


def not_a_model():
    return "model", nn.MSELoss(), (torch.randn(6, 3), torch.randn(6, 2))


def not_a_loss():
    return nn.Linear(3, 2), 3, (torch.randn(6, 3), torch.randn(6, 2))


def no_data():
    return nn.Linear(3, 2), nn.MSELoss(), None


def bad_loss():
    def loss(output, target):
        raise KeyError("weights")
    return nn.Linear(3, 2).double(), loss, (torch.randn(6, 3).double(), torch.randn(6, 2).double())


def wrong_batch():
    return nn.Linear(3, 2), nn.MSELoss(), (torch.randn(6, 3), torch.randn(5, 2))


def needs_argument(width):
    return nn.Linear(width, 2), nn.MSELoss(), (torch.randn(6, width), torch.randn(6, 2))


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict[str, str]:
    """Files for --model: a module with many functions, a syntax error, an import error."""
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "fuzz_models.py").write_text(textwrap.dedent(USER_MODULE))
    (folder / "fuzz_syntax.py").write_text("import torch\n\ndef make(:\n    pass\n")
    (folder / "fuzz_import.py").write_text("import torch\nimport no_such_package_here\n")
    (folder / "fuzz_raises_on_import.py").write_text("raise RuntimeError('set-up failed')\n")
    (folder / "blocker").write_text("a file, so nothing can be created below it")
    return {"folder": str(folder), "models": str(folder / "fuzz_models.py"),
            "syntax": str(folder / "fuzz_syntax.py"), "import": str(folder / "fuzz_import.py"),
            "raises": str(folder / "fuzz_raises_on_import.py"),
            "unwritable": str(folder / "blocker" / "out")}


def numeric_cases() -> list[tuple[str, list[str]]]:
    """(id, argv) for every numeric option with each bad value; ``{out}`` is a fresh folder."""
    def bad(*extra: str, finite: bool = True, integer: bool = True) -> list[str]:
        values = [*NOT_NUMBERS, *extra]
        if finite:
            values += NON_FINITE
        if integer:
            values += ["1.5"]
        return values

    table: list[tuple[list[str], str, list[str]]] = [
        (["newton", "--activation", "relu", "--x0", "1"], "--max-iter", bad("-1", HUGE)),
        (["newton", "--activation", "relu"], "--x0", bad(integer=False)),
        (["neuron"], "--w0", bad(integer=False)),
        (["neuron"], "--b0", bad(integer=False)),
        (["neuron"], "--b-fixed", bad(integer=False)),
        (["neuron"], "--samples", bad("0", "-3", HUGE)),
        (["neuron"], "--seed", bad("-1", SEED_TOO_LARGE)),
        (["neuron"], "--max-iter", bad("0", "-1", HUGE)),
        (["hessian", *TINY, "--estimate-only"], "--samples", bad("0", "-1", HUGE)),
        (["hessian", *TINY, "--estimate-only"], "--seed", bad("-1", SEED_TOO_LARGE, HUGE)),
        (["hessian", *TINY, "--estimate-only"], "--layers",
         ["3", "3,0,2", "3,-1,2", "a,b", "", f"3,{HUGE},2", "3,100000,100000,2", "3;2"]),
        (["hessian", *TINY, "--estimate-only"], "--memory-budget",
         ["lots", "-1GB", "0", "nan", "inf", "1e400GB", "", "5XB"]),
        (["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"], "--top", bad("0", "-2", HUGE)),
        (["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"], "--tol",
         bad("0", "-1e-3", "1", "1e30", integer=False)),
        (["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"], "--probes", bad("0", "-1", HUGE)),
        (["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"], "--density-probes",
         bad("0", "-1", HUGE)),
        (["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"], "--density-steps",
         bad("0", "-1", HUGE)),
        (["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"], "--seed",
         bad("-1", SEED_TOO_LARGE)),
        (["diagonal", *TINY, "--probes", "2", "--out", "{out}"], "--steps", bad("-1", HUGE)),
        (["diagonal", *TINY, "--steps", "2", "--probes", "2", "--out", "{out}"], "--every",
         bad("0", "-1", HUGE)),
        (["diagonal", *TINY, "--steps", "2", "--probes", "2", "--out", "{out}"], "--lr",
         bad("0", "-1", "1e30", integer=False)),
        (["diagonal", *TINY, "--steps", "2", "--probes", "2", "--out", "{out}"], "--alpha",
         bad("-0.1", "1", "2", integer=False)),
        (["diagonal", *TINY, "--steps", "0", "--out", "{out}"], "--probes", bad("0", "-1", HUGE)),
        ([*TRAIN, "--out", "{out}"], "--iterations", bad("0", "-1", HUGE)),
        ([*TRAIN, "--out", "{out}"], "--time-limit", bad("0", "-1", integer=False)),
        ([*TRAIN, "--out", "{out}"], "--epochs", bad("0", "-1", integer=False)),
        ([*TRAIN, "--out", "{out}"], "--batch-size", bad("0", "-1", HUGE)),
        ([*TRAIN, "--out", "{out}"], "--lr", bad("0", "-1", "1e30", integer=False)),
        ([*TRAIN, "--out", "{out}"], "--seed", bad("-1", SEED_TOO_LARGE)),
        ([*TRAIN, "--out", "{out}"], "--eval-every", bad("0", "-1", HUGE)),
        ([*TRAIN, "--out", "{out}"], "--checkpoint-every", bad("0", "-1", HUGE)),
        ([*TRAIN, "--out", "{out}", "--optimizer", "hf"], "--initial-damping",
         bad("-1", integer=False)),
        ([*TRAIN, "--out", "{out}"], "--collective-timeout", bad("0", "-1", "1e30",
                                                                 integer=False)),
        ([*BENCH, "--out", "{out}"], "--budget-seconds", bad("0", "-1", "1e30", integer=False)),
        ([*BENCH, "--out", "{out}"], "--budget-epochs", bad("0", "-1", "1e30", integer=False)),
        ([*BENCH, "--out", "{out}"], "--seeds",
         ["abc", "", "0", "-1", HUGE, "1000000000", "1.5", f"0,{SEED_TOO_LARGE}", "0,-1", ",",
          "0,0"]),
        ([*BENCH, "--out", "{out}"], "--tune-fraction", bad("0", "-1", "1.5", integer=False)),
        ([*BENCH, "--out", "{out}"], "--jobs", bad("0", "-1", HUGE, "100000")),
        ([*PRECONDITION, "--out", "{out}"], "--steps", bad("0", "-1", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--every", bad("0", "-1", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--batch-size", bad("0", "-1", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--damping", bad("0", "-1", "1e30", integer=False)),
        ([*PRECONDITION, "--out", "{out}"], "--top-k", bad("0", "-1", "1001", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--tol", bad("0", "-1e-3", "1", integer=False)),
        ([*PRECONDITION, "--out", "{out}"], "--max-products", bad("0", "-1", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--cg-maxiter", bad("0", "-1", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--probes", bad("0", "-1", HUGE)),
        ([*PRECONDITION, "--out", "{out}"], "--seed", bad("-1", SEED_TOO_LARGE)),
        ([*PRECONDITION, "--out", "{out}"], "--lr",
         bad("0", "-1", "1e30", "adam=0", "adam=", "=1", integer=False)),
        (["demo", "--out", "{out}"], "--bench-seconds", bad("0", "-1", "1e30", integer=False)),
    ]
    cases = []
    for base, option, values in table:
        for value in values:
            cases.append((f"{base[0]} {option}={value!r}", [*base, f"{option}={value}"]))
    return cases


def other_cases() -> list[tuple[str, list[str]]]:
    """Names, files, folders and combinations; ``{models}`` etc. are the user files."""
    spectrum = ["spectrum", *TINY, *SMALL_SPECTRUM, "--out", "{out}"]
    cases = [
        ("unknown command", ["nope"]),
        ("no command", []),
        ("newton unknown activation", ["newton", "--activation", "swish", "--x0", "1"]),
        ("newton unknown mode", ["newton", "--activation", "relu", "--x0", "1", "--mode", "x"]),
        ("newton missing x0", ["newton", "--activation", "relu"]),
        ("activations unwritable plot", ["activations", "--plot", "{unwritable}"]),
        ("newton unwritable plot", ["newton", "--activation", "relu", "--x0", "1",
                                    "--plot", "{unwritable}"]),
        ("neuron unwritable plot", ["neuron", "--plot", "{unwritable}"]),
        ("hessian unwritable out", ["hessian", *TINY, "--out", "{unwritable}"]),
        ("spectrum unwritable out", [*spectrum, "--out", "{unwritable}"]),
        ("diagonal unwritable out", ["diagonal", *TINY, "--steps", "1", "--every", "1",
                                     "--probes", "2", "--out", "{unwritable}"]),
        ("train unwritable out", [*TRAIN, "--out", "{unwritable}"]),
        ("bench unwritable out", [*BENCH, "--budget-epochs", "0.01", "--out", "{unwritable}"]),
        ("demo unwritable out", ["demo", "--out", "{unwritable}"]),
        ("hessian unknown activation", ["hessian", *TINY, "--activation", "swish",
                                        "--estimate-only"]),
        ("hessian unknown loss", ["hessian", *TINY, "--loss", "huber"]),
        ("hessian unknown data", ["hessian", *TINY, "--data", "cifar"]),
        ("hessian unknown dtype", ["hessian", *TINY, "--dtype", "float16"]),
        ("hessian digits wrong input width", ["hessian", "--layers", "3,2,10", "--estimate-only"]),
        ("hessian digits too few classes", ["hessian", "--layers", "64,2,3", "--estimate-only"]),
        ("hessian digits mse too few outputs", ["hessian", "--layers", "64,2,3", "--loss", "mse",
                                                "--estimate-only"]),
        ("hessian more samples than digits", ["hessian", "--layers", "64,2,10", "--samples",
                                              "5000", "--estimate-only"]),
        ("hessian random data too large", ["hessian", *TINY, "--samples", "10000000",
                                           "--layers", "1000,2,1000", "--estimate-only"]),
        ("hessian over the memory budget", ["hessian", *TINY, "--memory-budget", "1KB",
                                            "--out", "{out}"]),
        ("spectrum top above N", [*spectrum, "--top", "15"]),
        ("spectrum unknown matrix", [*spectrum, "--matrix", "fisher"]),
        ("diagonal unknown optimizer", ["diagonal", *TINY, "--optimizer", "lion"]),
        ("diagonal diverging lr", ["diagonal", *TINY, "--steps", "3", "--every", "1", "--lr",
                                   "1e20", "--optimizer", "sgd", "--probes", "2",
                                   "--out", "{out}"]),
        ("train unknown problem", ["train", "--problem", "nope", "--optimizer", "adam",
                                   "--iterations", "1"]),
        ("train unknown optimizer", ["train", "--problem", "digits-classifier", "--optimizer",
                                     "adamw", "--iterations", "1"]),
        ("train no budget", ["train", "--problem", "digits-classifier", "--optimizer", "adam",
                             "--out", "{out}"]),
        ("train neither problem nor model", ["train", "--optimizer", "adam", "--iterations", "1"]),
        ("train problem and model", [*TRAIN, "--model", "{models}:good", "--out", "{out}"]),
        ("train resume without checkpoint", [*TRAIN, "--resume", "--out", "{out}"]),
        ("train diverging lr", [*TRAIN, "--optimizer", "sgd", "--lr", "1e6", "--iterations",
                                "5", "--out", "{out}"]),
        ("train unknown device", [*TRAIN, "--device", "tpu", "--out", "{out}"]),
        ("train mnist missing data dir", ["train", "--problem", "mnist-autoencoder",
                                          "--optimizer", "adam", "--iterations", "1",
                                          "--data-dir", "{folder}/missing", "--out", "{out}"]),
        ("train newton too many parameters", ["train", "--problem", "digits-autoencoder",
                                              "--optimizer", "newton", "--iterations", "1",
                                              "--out", "{out}"]),
        ("precondition unwritable out", [*PRECONDITION, "--out", "{unwritable}"]),
        ("precondition unknown problem", ["precondition", "--problem", "nope"]),
        ("precondition unknown optimizer", [*PRECONDITION, "--optimizers", "adam,bogus"]),
        ("precondition empty optimizers", [*PRECONDITION, "--optimizers", ","]),
        ("precondition no preconditioner", [*PRECONDITION, "--optimizers", "lbfgs",
                                            "--out", "{out}"]),
        ("precondition lr of another optimizer", [*PRECONDITION, "--lr", "sgd=0.1",
                                                  "--out", "{out}"]),
        ("precondition problem and model", [*PRECONDITION, "--model", "{models}:good"]),
        ("bench unknown problem", ["bench", "--problem", "nope"]),
        ("bench unknown optimizer", [*BENCH, "--optimizers", "adam,bogus"]),
        ("bench empty optimizers", [*BENCH, "--optimizers", ","]),
        ("bench both budgets", [*BENCH, "--budget-seconds", "1", "--budget-epochs", "1"]),
        ("bench mnist missing data dir", ["bench", "--problem", "mnist-autoencoder",
                                          "--optimizers", "adam", "--budget-epochs", "0.01",
                                          "--data-dir", "{folder}/missing", "--out", "{out}"]),
    ]
    for command in ("hessian", "spectrum", "diagonal", "train", "precondition"):
        base = {"hessian": ["hessian", "--out", "{out}"], "spectrum": [*spectrum],
                "diagonal": ["diagonal", "--steps", "0", "--probes", "2", "--out", "{out}"],
                "train": ["train", "--optimizer", "adam", "--iterations", "1", "--no-progress",
                          "--out", "{out}"],
                "precondition": ["precondition", "--optimizers", "adam", "--steps", "1",
                                 "--top-k", "1", "--max-products", "5", "--cg-maxiter", "5",
                                 "--out", "{out}"]}[command]
        for name, spec in [
            ("raises", "{models}:raises"), ("shape mismatch", "{models}:shape_mismatch"),
            ("forward raises", "{models}:forward_raises"), ("nan data", "{models}:nan_data"),
            ("syntax error", "{syntax}:make"), ("import error", "{import}:make"),
            ("raises on import", "{raises}:make"), ("missing function", "{models}:nope"),
            ("missing file", "{folder}/none.py:make"), ("missing module", "no_such_mod:make"),
            ("no colon", "fuzz_models"), ("empty", ""), ("two things", "{models}:two_things"),
            ("not a model", "{models}:not_a_model"), ("not a loss", "{models}:not_a_loss"),
            ("no data", "{models}:no_data"), ("loss raises", "{models}:bad_loss"),
            ("wrong batch", "{models}:wrong_batch"), ("needs argument", "{models}:needs_argument"),
            ("not callable", "{models}:NOT_CALLABLE"),
        ]:
            cases.append((f"{command} --model {name}", [*base, "--model", spec]))
    return cases


CASES = numeric_cases() + other_cases()


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``hesskit argv`` run in-process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits from inside parse_args
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv", [argv for _, argv in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_on_stderr_and_exit_2(argv, user_files, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HESSKIT_TRACEBACK", raising=False)
    fields = {**user_files, "out": str(tmp_path / "out")}
    code, err = run_cli([part.format(**fields) for part in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code == 2 and len(lines) == 1 and len(err.strip().splitlines()) == 1, (code, err)


def test_the_fuzz_covers_every_command():
    from hesskit.cli.main import COMMANDS

    covered = {argv[0] for _, argv in CASES if argv}
    assert set(COMMANDS) <= covered
    assert len(CASES) >= 300


def test_user_model_errors_name_the_file_and_line(user_files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["hessian", "--model", f"{user_files['models']}:raises",
                         "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "your model function raises() in" in err and "fuzz_models.py:" in err
    assert "raised ValueError: the data folder is empty" in err
    code, err = run_cli(["hessian", "--model", f"{user_files['models']}:forward_raises",
                         "--out", str(tmp_path)], capsys)
    assert code == 2 and "forward() in" in err and "RuntimeError" in err
    code, err = run_cli(["hessian", "--model", f"{user_files['syntax']}:make"], capsys)
    assert code == 2 and "fuzz_syntax.py:3" in err and "SyntaxError" in err


@pytest.mark.parametrize("how", ["option before", "option after", "environment"])
def test_traceback_on_request(how, user_files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["hessian", "--model", f"{user_files['models']}:raises", "--out", str(tmp_path)]
    if how == "option before":
        argv = ["--traceback", *argv]
    elif how == "option after":
        argv = [*argv, "--traceback"]
    else:
        monkeypatch.setenv("HESSKIT_TRACEBACK", "1")
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" in err and "the data folder is empty" in err
    assert err.strip().splitlines()[-1].startswith("hesskit hessian: error: your model function")


def test_a_module_in_the_current_directory_is_found_as_python_m_does(tmp_path, capsys,
                                                                      monkeypatch):
    (tmp_path / "cwd_model_for_fuzz.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    code, err = run_cli(["hessian", "--model", "cwd_model_for_fuzz:good",
                         "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert (Path(tmp_path) / "out" / "structure.json").is_file()
