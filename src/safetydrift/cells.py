"""Names of the grid's cells and checkpoints, shared by stages, outputs and the report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BASE_CELL = "base"


@dataclass(frozen=True)
class Cell:
    """One (method, learning rate) of the grid; its name matches DVC's matrix stage names."""

    method: str
    learning_rate: float

    @property
    def name(self) -> str:
        return cell_name(self.method, self.learning_rate)


def cell_name(method: str, learning_rate: float) -> str:
    """`lora-5e-05`: Python's repr of the float, as DVC names `train@lora-5e-05`."""
    return f"{method}-{float(learning_rate)}"


def checkpoint_label(fraction: float) -> str:
    """`ckpt-025` for 25% of the steps; `ckpt-000` is the base model."""
    return f"ckpt-{round(fraction * 100):03d}"


def grid_cells(methods: Iterable[str], learning_rates: Iterable[float]) -> list[Cell]:
    return [Cell(m, float(lr)) for m in methods for lr in learning_rates]
