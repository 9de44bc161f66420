"""Bad inputs that could lose a user's work: each is one line on stderr, exit 2, and every
file of the pre-existing output folder byte-identical afterwards (issue 21).

The folder is prepared once per case: a finished ``train`` run (``log.jsonl``,
``checkpoint.pt``), a finished ``bench`` or ``precondition`` folder, or a folder holding
one unrelated file. Cases run in-process through ``hesskit.cli.main.main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hesskit.cli.main import main
from hesskit.cli.options import OPTIMIZER_NAMES

USER_MODULE = '''
import warnings

import torch
from torch import nn


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    return x, torch.randn(16, 2, generator=generator, dtype=torch.float64)


def good():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, nn.MSELoss(), _data()


def nan_data():
    x, y = _data()
    x[3, 2] = float("nan")
    return good()[0], nn.MSELoss(), (x, y)


def inf_targets():
    x, y = _data()
    y[5, 0] = float("inf")
    return good()[0], nn.MSELoss(), (x, y)


class WarnsThenFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        warnings.warn("this layer is deprecated", UserWarning)
        return self.linear(x).view(5, -1)


def warns_then_fails():
    return WarnsThenFails().double(), nn.MSELoss(), _data()
'''

PRECONDITION = ["precondition", "--optimizers", "adam", "--steps", "1", "--top-k", "1",
                "--max-products", "5", "--cg-maxiter", "5", "--no-layers", "--batch-size", "8"]
BENCH = ["bench", "--problem", "digits-classifier", "--budget-epochs", "0.02",
         "--no-progress", "--tune-fraction", "1"]


def train(model: str, optimizer: str, *extra: str) -> list[str]:
    return ["train", "--model", model, "--optimizer", optimizer, "--iterations", "2",
            "--batch-size", "8", "--no-progress", *extra]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The user module and one finished run of each kind (copied into each case)."""
    root = tmp_path_factory.mktemp("no_data_lost")
    module = root / "lost_models.py"
    module.write_text(textwrap.dedent(USER_MODULE))
    model = f"{module}:good"
    made = {"module": module, "train": root / "train", "bench": root / "bench",
            "precondition": root / "precondition", "other": root / "other"}
    assert main([*train(model, "adam"), "--out", str(made["train"])]) == 0
    assert main([*BENCH, "--optimizers", "sgd", "--out", str(made["bench"])]) == 0
    assert main([*PRECONDITION, "--model", model, "--out", str(made["precondition"])]) == 0
    made["other"].mkdir()
    made["tour"] = root / "tour"
    (made["tour"] / "bench").mkdir(parents=True)
    (made["tour"] / "index.html").write_text("<p>the tour</p>\n")
    (made["tour"] / "bench" / "report.json").write_text("{}\n")
    (made["other"] / "notes.txt").write_text("the user's own file\n")
    return made


def case_table() -> list[tuple[str, str, list[str], str]]:
    """(id, which folder is --out, argv with {models} for the user module, a phrase the
    error line must hold)."""
    good = "{models}:good"
    held = "already holds a run"
    cases = [(f"train {name} into a finished run", "train", train(good, name), held)
             for name in ("adam", "sgd", "kfac", "hf")]
    cases += [
        ("train --resume and --overwrite", "train", [*train(good, "adam"), "--resume",
                                                     "--overwrite"], "not allowed with"),
        ("bench into a finished benchmark", "bench", [*BENCH, "--optimizers", "sgd"], held),
        ("bench another method into a finished benchmark", "bench",
         [*BENCH, "--optimizers", "adam"], held),
        ("precondition into finished measurements", "precondition",
         [*PRECONDITION, "--model", good], held),
        ("demo into a finished tour", "tour", ["demo", "--out", "{out}"], held),
        ("bench adam twice", "other", [*BENCH, "--optimizers", "adam,adam"], "adam twice"),
        ("bench kfac twice", "other", [*BENCH, "--optimizers", "kfac,sgd,kfac"], "kfac twice"),
        ("neuron w0 1e308", "other", ["neuron", "--w0=1e308", "--plot", "{out}"], "must lie"),
        ("neuron w0 -1e308", "other", ["neuron", "--w0=-1e308", "--plot", "{out}"],
         "must lie"),
        ("neuron b0 1e200", "other", ["neuron", "--b0=1e200", "--plot", "{out}"], "must lie"),
        ("neuron b-fixed -1e300", "other", ["neuron", "--b-fixed=-1e300", "--plot", "{out}"],
         "must lie"),
        ("precondition nan data", "other", [*PRECONDITION, "--model", "{models}:nan_data"],
         "the data, inputs has 1 NaN"),
        ("precondition inf targets", "other",
         [*PRECONDITION, "--model", "{models}:inf_targets"], "the data, targets has 1 inf"),
    ]
    cases += [(f"train {name} nan data", "other", train("{models}:nan_data", name),
               "the data, inputs has 1 NaN entries, first at [3, 2]")
              for name in OPTIMIZER_NAMES]
    cases += [(f"train {name} inf targets", "other", train("{models}:inf_targets", name),
               "the data, targets has 1 infinite entries, first at [5, 0]")
              for name in ("adam", "sophia-h", "kfac")]
    return cases


CASES = case_table()


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits from inside parse_args
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("kind", "argv", "phrase"),
                         [(kind, argv, phrase) for _, kind, argv, phrase in CASES],
                         ids=[name for name, *_ in CASES])
def test_bad_input_is_one_line_exit_2_and_the_folder_is_unchanged(
        kind, argv, phrase, folders, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HESSKIT_TRACEBACK", raising=False)
    out = tmp_path / "out"
    shutil.copytree(folders[kind], out)
    before = folder_hashes(out)
    fields = {"models": str(folders["module"]), "out": str(out)}
    argv = [part.format(**fields) for part in argv]
    if "--out" not in argv and "--plot" not in argv:
        argv += ["--out", str(out)]
    code, err = run_cli(argv, capsys)
    assert "Traceback" not in err and "bug in hesskit" not in err, err
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    assert phrase in err, err
    assert folder_hashes(out) == before


@pytest.mark.parametrize("command", ["train"])
def test_a_warning_before_a_failure_leaves_one_line_on_stderr(command, folders, tmp_path):
    """In a fresh interpreter (pytest would capture the warning itself)."""
    model = f"{folders['module']}:warns_then_fails"
    argv = (train(model, "adam") if command == "train"
            else [*PRECONDITION, "--model", model])
    env = {key: value for key, value in os.environ.items() if key != "HESSKIT_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "hesskit", *argv, "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "this layer is deprecated" not in done.stderr and "raised RuntimeError" in lines[0]


def test_a_refused_run_names_the_folder_and_the_ways_on(folders, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(folders["train"], out)
    code, err = run_cli([*train(f"{folders['module']}:good", "sgd"), "--out", str(out)], capsys)
    assert code == 2 and str(out) in err
    assert "--resume" in err and "new --out" in err and "--overwrite" in err


@pytest.mark.parametrize("name", ["adam", "sophia-h", "kfac"])
def test_nan_in_the_data_is_named_as_data_with_its_index(name, folders, tmp_path, capsys):
    code, err = run_cli([*train(f"{folders['module']}:nan_data", name),
                         "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "the data, inputs has 1 NaN entries, first at [3, 2]" in err, err
    assert "lr" not in err and not (tmp_path / "out").exists()


def test_overwrite_moves_the_old_run_aside_byte_for_byte(folders, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(folders["train"], out)
    before = folder_hashes(out)
    code, err = run_cli([*train(f"{folders['module']}:good", "sgd"), "--overwrite",
                         "--out", str(out)], capsys)
    assert code == 0, err
    aside = [path for path in tmp_path.iterdir() if path.name.startswith("run.old-")]
    assert len(aside) == 1 and folder_hashes(aside[0]) == before
    assert str(aside[0]) in err and len(err.strip().splitlines()) == 1
    header = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert header["optimizer"] == "sgd"


def test_the_warning_of_a_failing_model_shows_with_traceback(folders, tmp_path, capsys):
    code, err = run_cli(["--traceback", "hessian", "--model",
                         f"{folders['module']}:warns_then_fails", "--out", str(tmp_path)],
                        capsys)
    assert code == 2 and "this layer is deprecated" in err and "Traceback" in err


def test_a_warning_of_a_command_that_succeeds_is_still_shown(folders, tmp_path):
    import warnings

    module = tmp_path / "warns_ok.py"
    module.write_text(textwrap.dedent('''
        import warnings
        from lost_models import good
        def make():
            warnings.warn("made with an old recipe", UserWarning)
            return good()
    '''))
    import sys
    sys.path.insert(0, str(folders["module"].parent))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main([*train(f"{module}:make", "sgd"), "--out", str(tmp_path / "out")]) == 0
    finally:
        sys.path.remove(str(folders["module"].parent))
    assert any("made with an old recipe" in str(w.message) for w in caught)


def test_an_interrupted_precondition_keeps_what_it_measured(folders, tmp_path, monkeypatch):
    from hesskit.analysis.preconditioner_records import PreconditionerAnalysis
    from hesskit.training import preconditioner_run

    original = preconditioner_run._Run.record
    calls = []

    def record_then_stop(self, step, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(step)
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(preconditioner_run._Run, "record", record_then_stop)
    out = tmp_path / "out"
    argv = ["precondition", "--model", f"{folders['module']}:good", "--optimizers",
            "sgd,adam", "--steps", "2", "--every", "1", "--top-k", "1", "--max-products", "5",
            "--cg-maxiter", "5", "--no-layers", "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 130
    partial = json.loads((out / "preconditioner.partial.json").read_text())
    analysis = PreconditionerAnalysis.from_json(partial)
    assert [(run.optimizer, [r.step for r in run.records]) for run in analysis.runs] == [
        ("sgd", [1, 2])]
    assert not (out / "preconditioner.json").exists()


def test_an_interrupted_bench_keeps_the_methods_it_finished(folders, tmp_path, monkeypatch):
    from hesskit.training import bench

    original = bench.run_method

    def run_then_stop(config, name, *args):
        if name == "adam":
            raise KeyboardInterrupt
        return original(config, name, *args)

    monkeypatch.setattr(bench, "run_method", run_then_stop)
    out = tmp_path / "out"
    assert main([*BENCH, "--optimizers", "sgd,adam", "--out", str(out)]) == 130
    partial = json.loads((out / "report.partial.json").read_text())
    assert partial["optimizers"] == ["sgd"] and {run["optimizer"] for run in partial["runs"]} \
        == {"sgd"}
    assert not (out / "report.json").exists()


def test_precondition_stopped_by_sigterm_leaves_its_measurements(folders, tmp_path):
    """The issue's case: SIGTERM part-way through leaves a readable partial result."""
    import signal
    import time

    from hesskit.analysis.preconditioner_records import PreconditionerAnalysis

    out = tmp_path / "out"
    partial = out / "preconditioner.partial.json"
    argv = [sys.executable, "-m", "hesskit", "precondition", "--model",
            f"{folders['module']}:good", "--optimizers", "sgd,adam", "--steps", "1000000",
            "--every", "1", "--top-k", "1", "--max-products", "5", "--cg-maxiter", "5",
            "--no-layers", "--batch-size", "8", "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not partial.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        process.kill()
    analysis = PreconditionerAnalysis.from_json(json.loads(partial.read_text()))
    assert analysis.runs[0].optimizer == "sgd" and analysis.runs[0].records

