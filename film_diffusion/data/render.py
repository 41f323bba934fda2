"""Drawing a scene at a given resolution: shapes are drawn on a canvas SUPERSAMPLE times larger and
box-averaged down, so every edge is anti-aliased at the target size, never upscaled from a smaller one.

All randomness (placement jitter, size jitter, colour jitter, background) is drawn from the caller's
generator before any pixel is touched, and never depends on the resolution: the same scene at 32 and
64 pixels is the same picture at two sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from film_diffusion.data.vocabulary import GRID, cell_row_col

VERSION = "1"  # bump when a change alters the pixels: oracle weights made for another version are not trusted
SUPERSAMPLE = 4  # 16 coverage levels per pixel
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
EXTENT = {"small": 0.55, "large": 0.85}  # bounding-box side as a share of the cell side
EXTENT_JITTER = 0.03
COLOR_JITTER = 8  # per channel, in 0..255 units


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points  # first tip straight up
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_CIRCLE_ANGLES = np.linspace(0, 2 * np.pi, 48, endpoint=False)
# Every shape is a polygon inside the box [-1, 1]^2 (y points down); a new shape is one entry here and
# one in the vocabulary (and a retrained oracle).
OUTLINES: dict[str, np.ndarray] = {
    "circle": np.stack([np.cos(_CIRCLE_ANGLES), np.sin(_CIRCLE_ANGLES)], axis=1),
    "square": np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]),
    "triangle": np.array([(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]),
    "star": _star(),
}


def render(objects: Sequence[dict], resolution: int, rng: np.random.Generator) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 picture of ``objects`` (each inside its grid cell, so none overlap)."""
    background = _background(rng, resolution)
    side = resolution * SUPERSAMPLE
    cell = side / GRID
    color = Image.new("RGB", (side, side))  # colour times coverage (premultiplied), black outside shapes
    alpha = Image.new("L", (side, side))
    draw_color, draw_alpha = ImageDraw.Draw(color), ImageDraw.Draw(alpha)
    for obj in objects:
        extent = EXTENT[obj["size"]] + rng.uniform(-EXTENT_JITTER, EXTENT_JITTER)
        slack = (1 - extent) / 2 * 0.8  # keep a margin so shapes in neighbouring cells never touch
        dx, dy = rng.uniform(-slack, slack, size=2)
        rgb = np.clip(np.array(PALETTE[obj["color"]]) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3), 0, 255)
        row, col = cell_row_col(obj["cell"])
        center = ((col + 0.5 + dx) * cell, (row + 0.5 + dy) * cell)
        points = [tuple(p) for p in (np.array(center) + extent * cell / 2 * OUTLINES[obj["shape"]]).tolist()]
        draw_color.polygon(points, fill=tuple(int(v) for v in rgb))
        draw_alpha.polygon(points, fill=255)
    premultiplied = np.asarray(color.reduce(SUPERSAMPLE), dtype=np.float32)
    coverage = np.asarray(alpha.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255
    return np.rint(premultiplied + (1 - coverage) * background).clip(0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """A grey board with a faint tint and a gentle linear gradient: plain, but not one flat value."""
    level = rng.uniform(85, 115)
    tint = rng.uniform(-6, 6, size=3)
    slope_x, slope_y = rng.uniform(-20, 20, size=2)
    ramp = np.linspace(-0.5, 0.5, resolution, dtype=np.float32)
    return (level + tint + (slope_x * ramp[None, :] + slope_y * ramp[:, None])[..., None]).astype(np.float32)
