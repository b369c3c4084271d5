"""`autoprompt train` on a terminal: a bar over the run's steps, each evaluation's line above it."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepBar:
    """A context manager: `step(step, steps, loss)` moves the bar, `line(text)` prints above it."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task("", total=None)

    def __enter__(self) -> StepBar:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.progress.stop()

    def step(self, step: int, steps: int, loss: float) -> None:
        self.progress.update(self.task, total=steps, completed=step, description=f"loss {loss:.4f}")

    def line(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)
