"""How the study reports print numbers and markdown rows."""

from __future__ import annotations

from typing import Any


def format_number(value: Any) -> str:
    """Three decimals below 10, two above: the precision the tables print."""
    if value is None:
        return ""
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
