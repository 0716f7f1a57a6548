"""A byte progress bar for uploads and downloads (rich), fed by GatewayClient's `progress` callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


@contextlib.contextmanager
def byte_progress(description: str, total: int, console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """Show a bar of `total` bytes; yields the callback that advances it by the bytes just moved.

    The bar never runs past `total`, even if a retry or redirect makes the client read a file twice.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        done = [0]

        def advance(n: int) -> None:
            step = min(n, total - done[0])
            if step > 0:
                done[0] += step
                bar.update(task, advance=step)

        yield advance
        bar.update(task, completed=total)


def files_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)
