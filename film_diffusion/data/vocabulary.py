"""The words of the built-in scenes. Rendering, captions, the oracle and any evaluation that builds
captions import them from here, so one list decides what a scene can contain."""

from __future__ import annotations

COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "large")
GRID = 3  # the scene is a GRID x GRID board; CELLS lists it in reading order (row-major)
CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip


def cell_row_col(cell: str) -> tuple[int, int]:
    """(row, column) of a cell name, counted from the top left."""
    return divmod(CELLS.index(cell), GRID)
