"""Tables of study results quoted in the README and under docs/ are the reports' own figures: a table after
``<!-- film-diffusion summary REPORT COLUMN ... -->`` is exactly that command's output, and one after
``<!-- table from PATH -->`` appears line for line in that file. A rerun study or an edited number fails here."""

import re
from pathlib import Path

import pytest

from film_diffusion.studies.summary import summary

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!-- (film-diffusion summary (?P<args>[^>]+)|table from (?P<path>\S+)) -->")


def quoted_tables() -> list[tuple[str, re.Match, list[str]]]:
    found = []
    for document in DOCUMENTS:
        lines = document.read_text().splitlines()
        for i, line in enumerate(lines):
            if match := MARKER.fullmatch(line.strip()):
                table = []
                for following in lines[i + 1:]:
                    if not following.startswith("|"):
                        break
                    table.append(following)
                found.append((f"{document.relative_to(ROOT)}:{i + 1}", match, table))
    return found


TABLES = quoted_tables()


def test_the_readme_quotes_the_studies_through_markers():
    assert sum(where.startswith("README.md") for where, _, _ in TABLES) >= 1


@pytest.mark.parametrize(("where", "match", "table"), TABLES, ids=[where for where, _, _ in TABLES])
def test_a_quoted_table_matches_its_source(where, match, table):
    assert len(table) >= 3, f"{where}: the marker is not followed by a table"
    if match["args"]:
        report, *columns = match["args"].split()
        assert table == summary(ROOT / report, columns).splitlines(), f"{where}: rerun the command in the marker"
    else:
        source = (ROOT / match["path"]).read_text().splitlines()
        starts = [i for i, line in enumerate(source) if line == table[0]]
        assert any(source[i:i + len(table)] == table for i in starts), f"{where}: not in {match['path']}"
