"""Run records of rank 0: ``metrics.csv``, the TensorBoard writer and the progress bar."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from misc.io import atomic_write


class MetricsTable:
    """``metrics.csv``: one row per epoch, rewritten atomically; columns grow as keys appear."""

    def __init__(self, path: Path, keep_until_epoch: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_until_epoch is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= keep_until_epoch]

    def append(self, row: dict[str, Any]) -> None:
        """Add a row and rewrite the file."""
        self.rows.append(row)
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_write(self.path, "w") as handle:
            handle.write(buffer.getvalue())


def tensorboard_writer(run_dir: Path, purge_step: int | None) -> Any:
    """A TensorBoard ``SummaryWriter`` logging to ``run_dir/tb``, dropping events at and after
    ``purge_step`` (a resumed run rewrites them)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)


def progress_bar(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``iterable`` (``total`` items), drawn only when ``enabled``."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
