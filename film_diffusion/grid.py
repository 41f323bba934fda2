"""Sample grids labelled with their captions: one row per caption, the caption on the left."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 220  # pixels of caption text to the left of each row
FONT_SIZE = 12
PAD = 4
MAX_LABEL_LINES = 6  # a longer caption is cut there, with an ellipsis: the grid stays a grid


def labelled_grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str], min_cell: int = 96) -> Image.Image:
    """Each row's images beside its label, wrapped to the label column (at most ``MAX_LABEL_LINES``). Images
    smaller than ``min_cell`` pixels are enlarged by nearest neighbour, so small samples stay sharp; larger ones
    keep their size.
    Deterministic: the same images and labels give the same pixels."""
    if len(rows) != len(labels):
        raise ValueError(f"labelled_grid got {len(rows)} rows and {len(labels)} labels; pass one label per row.")
    cell = max([min_cell] + [image.width for row in rows for image in row])
    font = ImageFont.load_default(size=FONT_SIZE)
    columns = max(len(row) for row in rows)
    line_height = FONT_SIZE + 3
    wrapped = [textwrap.wrap(label, width=LABEL_WIDTH // (FONT_SIZE // 2 + 1), max_lines=MAX_LABEL_LINES) or [""]
               for label in labels]
    row_height = max(cell, *(len(lines) * line_height for lines in wrapped)) + PAD
    grid = Image.new("RGB", (LABEL_WIDTH + columns * (cell + PAD) + PAD, len(rows) * row_height + PAD), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, lines) in enumerate(zip(rows, wrapped, strict=True)):
        top = PAD + r * row_height
        for i, line in enumerate(lines):
            draw.text((PAD, top + i * line_height), line, fill="black", font=font)
        for c, image in enumerate(row):
            scaled = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(scaled, (LABEL_WIDTH + c * (cell + PAD), top))
    return grid
