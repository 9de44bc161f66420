"""The progress bar of a training run (rich): budget used, latest loss, errors, λ and CG."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hesskit.report.schema import IterationRecord


class RunProgressBar:
    """A rich progress bar showing the budget used and the latest loss, errors, λ and CG."""

    def __init__(self, title: str, *, enabled: bool) -> None:
        self.title, self.enabled = title, enabled
        self.shown: dict[str, str] = {}

    def __enter__(self) -> RunProgressBar:
        if self.enabled:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=1.0, stats="")
        return self

    def update(self, fraction: float, record: IterationRecord) -> None:
        if not self.enabled:
            return
        for key, label in (("loss", "loss"), ("train_error", "train"), ("test_error", "test"),
                           ("damping", "λ"), ("cg_iterations", "CG")):
            value = getattr(record, key)
            if value is not None:
                self.shown[key] = f"{label} {value:.4g}"
        self.progress.update(self.task, completed=fraction, stats="  ".join(self.shown.values()))

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self.progress.stop()
