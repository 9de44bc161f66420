"""A tiny run of every demo step (seconds, not minutes) for the page tests to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from hesskit.cli.main import main
from hesskit.report.html import write_report
from hesskit.report.schema import BenchmarkReport, IterationRecord, RunResult

TINY_MODEL = ["--layers", "64,3,10", "--samples", "24"]


def tiny_bench_report() -> BenchmarkReport:
    """Two optimizers, one seed, six records each: enough for every figure of the report."""
    def run(name: str, final: float) -> RunResult:
        records = [IterationRecord(iteration=i, wall_time=0.1 * i, epochs=0.5 * i,
                                   products=0, loss=None if i == 0 else 10.0 / i,
                                   train_error=final + 1.0 / (i + 1),
                                   test_error=final + 1.5 / (i + 1), lr=1e-3)
                   for i in range(6)]
        return RunResult(name, 0, 1e-3, 100, "epochs", records, final, final + 0.5)

    return BenchmarkReport(
        problem="digits-autoencoder", problem_description="A tiny autoencoder.",
        error_name="squared error", budget_kind="epochs", budget_value=2.5, seeds=[0],
        optimizers=["adam", "sgd"], runs=[run("adam", 1.0), run("sgd", 2.0)],
        titles={"adam": "Adam", "sgd": "SGD"}, environment={"torch": "test"},
        method_note="protocol", created="today",
    )


def run_demo_steps(out: Path) -> None:
    """The demo's steps on a tiny network, each exactly as a user would type it."""
    argvs = [
        ["activations", "--plot", str(out / "activations")],
        ["newton", "--activation", "relu", "--x0", "1.5", "--plot", str(out / "newton"),
         "--json", str(out / "newton" / "newton_relu.json")],
        ["newton", "--activation", "tanh", "--x0", "-1", "--plot", str(out / "newton"),
         "--json", str(out / "newton" / "newton_tanh.json")],
        ["neuron", "--plot", str(out / "neuron"), "--json", str(out / "neuron" / "neuron.json")],
        ["hessian", *TINY_MODEL, "--out", str(out / "hessian")],
        ["spectrum", *TINY_MODEL, "--top", "2", "--probes", "6", "--density-steps", "16",
         "--out", str(out / "spectrum")],
        ["diagonal", *TINY_MODEL, "--steps", "4", "--every", "2", "--probes", "4",
         "--out", str(out / "diagonal")],
    ]
    for argv in argvs:
        assert main(argv) == 0, argv
    (out / "bench").mkdir()
    write_report(tiny_bench_report(), out / "bench")


@pytest.fixture(scope="session")
def tour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as ``hesskit demo --out`` leaves it (tiny settings, fake bench)."""
    out = tmp_path_factory.mktemp("tour")
    run_demo_steps(out)
    return out
