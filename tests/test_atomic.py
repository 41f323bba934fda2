"""The one helper that writes a file or folder whole: published on success, discarded on an error, the old version
untouched until the new one is complete; and the clean-up of what a kill leaves."""

import pytest

from film_diffusion.atomic import OLD_SUFFIX, clean_leftovers, partial_path, remove_folder, write_text, written


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "config.yaml"
    write_text(path, "old")
    with pytest.raises(RuntimeError), written(path) as partial:
        partial.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and not partial_path(path).exists()
    write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path):
    folder = tmp_path / "pipeline"
    with written(folder) as partial:
        partial.mkdir()
        (partial / "a").write_text("1")
    with pytest.raises(RuntimeError), written(folder) as partial:
        partial.mkdir()
        (partial / "b").write_text("2")
        raise RuntimeError("killed")
    assert [p.name for p in folder.iterdir()] == ["a"]
    with written(folder) as partial:
        partial.mkdir()
        (partial / "b").write_text("2")
    assert [p.name for p in folder.iterdir()] == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


def test_clean_leftovers_removes_partial_writes_and_restores_an_only_copy(tmp_path):
    (tmp_path / "checkpoint-2.partial").mkdir()
    (tmp_path / "metrics.jsonl.partial").write_text("torn")
    (tmp_path / ("checkpoint-4" + OLD_SUFFIX)).mkdir()  # a kill between the two renames: the only copy
    (tmp_path / "checkpoint-6").mkdir()
    remove_folder(tmp_path / "checkpoint-6")
    removed = clean_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == ["checkpoint-2.partial", "metrics.jsonl.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
