"""Progress bars on stderr for long passes (calibration, comparison); silent when quiet."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress(label: str, total: int | None, quiet: bool = False):
    """Context manager yielding ``advance(n)``; draws a rich bar on stderr unless ``quiet``."""
    if quiet:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def notice(text: str, quiet: bool = False) -> None:
    """One line on stderr now, before long work (``qdq: …``), unless ``quiet``."""
    if not quiet:
        print(f"qdq: {text}", file=sys.stderr, flush=True)
