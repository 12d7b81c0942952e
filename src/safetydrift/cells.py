"""Names of the grid's cells and checkpoints, shared by stages, outputs and the report.

A cell is one training run: a method, a learning rate and a seed (`grid.methods`,
`grid.learning_rates`, `grid.seeds`, the three axes of dvc.yaml's matrix stages). Its name is the
matrix item's values joined by `-`, exactly as DVC names the stages (`train@lora-5e-05-42`), so a
seed added to `grid.seeds` adds cells and renames none.

Results written before the seed axis (`train.seed`, one run per method and learning rate) name
their cells METHOD-LR (`lora-5e-05`); the report and `safetydrift compare` still read them, as
cells without a seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from safetydrift.params import ParamError, get

BASE_CELL = "base"
# numpy's seeds are 32-bit, and transformers' set_seed seeds numpy too.
MAX_SEED = 2**32 - 1
SEEDS_KEY = "grid.seeds"
TRAIN_SEED_MOVED = (
    "params.yaml: `train.seed` is no longer read: each cell's seed is an entry of `grid.seeds` "
    "(an axis of the grid, so adding a seed adds cells); move the value there "
    "(`grid: {seeds: [42]}` for the seed it had) and delete `train.seed`"
)


@dataclass(frozen=True)
class Cell:
    """One (method, learning rate, seed) of the grid; its name matches DVC's matrix stage names.

    `seed` is None only for a cell of results written before the seed axis (named METHOD-LR).
    """

    method: str
    learning_rate: float
    seed: int | None = None

    @property
    def name(self) -> str:
        return cell_name(self.method, self.learning_rate, self.seed)


def cell_name(method: str, learning_rate: float, seed: int | None = None) -> str:
    """`lora-5e-05-42`: Python's repr of the float, as DVC names `train@lora-5e-05-42`.
    Without a seed, `lora-5e-05`: the name of a cell from before the seed axis."""
    name = f"{method}-{float(learning_rate)}"
    return name if seed is None else f"{name}-{int(seed)}"


def parse_cell(name: str) -> Cell:
    """The cell a name stands for: METHOD-LR-SEED (`lora-5e-05-42`), or METHOD-LR from before the
    seed axis. A learning rate's own `-` (`5e-05`) is why the seed is read from the right."""
    method, _, rest = name.partition("-")
    expected = f"cell `{name}`: expected METHOD-LR-SEED such as lora-5e-05-42"
    if not method or not rest:
        raise ValueError(expected)
    try:
        return Cell(method, float(rest))
    except ValueError:
        pass
    rate, _, seed = rest.rpartition("-")
    try:
        return Cell(method, float(rate), int(seed))
    except ValueError:
        raise ValueError(expected) from None


def checkpoint_label(fraction: float) -> str:
    """`ckpt-025` for 25% of the steps; `ckpt-000` is the base model."""
    return f"ckpt-{round(fraction * 100):03d}"


def seed_value(value: Any, key: str = SEEDS_KEY) -> int:
    """A seed as an int, or a named error: a whole number in [0, 2**32 - 1] (text of one too, as
    the train stage's `--seed` gives it)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ParamError(
            f"params.yaml: `{key}` holds {value!r}; a seed is a whole number from 0 to {MAX_SEED}"
        )
    return value


def reject_train_seed(params: Mapping[str, Any]) -> None:
    """`grid.seeds` is the one place a training seed is set: `train.seed` is an error, not a
    second source that could disagree with it."""
    if get(params, "train.seed", None) is not None:
        raise ParamError(TRAIN_SEED_MOVED)


def grid_seeds(params: Mapping[str, Any]) -> list[int]:
    """`grid.seeds`, checked: the seeds each method and learning rate is trained with."""
    reject_train_seed(params)
    seeds = get(params, SEEDS_KEY, None)
    if seeds is None:
        raise ParamError(
            "params.yaml: missing key `grid.seeds` (the seeds each method and learning rate is "
            "trained with, e.g. `seeds: [42]` under `grid:`; it replaced `train.seed`)"
        )
    if not isinstance(seeds, list) or not seeds:
        raise ParamError(f"params.yaml: `grid.seeds` must be a non-empty list, got {seeds!r}")
    checked = [seed_value(seed) for seed in seeds]
    repeated = sorted({seed for seed in checked if checked.count(seed) > 1})
    if repeated:
        raise ParamError(
            f"params.yaml: `grid.seeds` lists {', '.join(map(str, repeated))} more than once: "
            "two cells of one seed would be the same DVC stage"
        )
    return checked


def grid_cells(
    methods: Iterable[str], learning_rates: Iterable[float], seeds: Iterable[int | None] = (None,)
) -> list[Cell]:
    """Every method × learning rate × seed, in DVC's matrix order. Without seeds: the cells of
    results from before the seed axis."""
    seeds = list(seeds)
    return [Cell(m, float(lr), s) for m in methods for lr in learning_rates for s in seeds]


def study_cells(params: Mapping[str, Any], *, before_seed_axis: bool = False) -> list[Cell]:
    """The cells of the grid `params` describes.

    `before_seed_axis`: params without `grid.seeds` (those of results written before it, such
    as a committed report's params.yaml) describe one cell per method and learning rate, named
    METHOD-LR. Readers of results allow it; whatever trains or runs the grid does not.
    """
    methods, rates = get(params, "grid.methods"), get(params, "grid.learning_rates")
    if before_seed_axis and get(params, SEEDS_KEY, None) is None:
        return grid_cells(methods, rates)
    return grid_cells(methods, rates, grid_seeds(params))
