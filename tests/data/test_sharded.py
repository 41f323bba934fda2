"""Sharded datasets read in place (``data.name: hf`` and ``webdataset``): the folder dataset's items from the
same images, broken samples skipped and counted, chunks read once per shuffle window, DataLoader workers giving
the same batches, and one sentence for each mistake in the config."""

import logging

import pytest
import torch
from shards import samples, write_arrow, write_folder, write_parquet, write_tars
from torch.utils.data import DataLoader

from film_diffusion.config import ConfigError
from film_diffusion.data import collate
from film_diffusion.data.folder import ImageFolderDataset
from film_diffusion.training.build import build_dataset
from film_diffusion.training.config import load_experiment
from film_diffusion.training.streams import SeededItems, StreamSampler, WindowShuffle

WRITERS = {"parquet": ("hf", write_parquet), "arrow": ("hf", write_arrow), "tar": ("webdataset", write_tars),
           "tar_json": ("webdataset", lambda root, rows: write_tars(root, rows, caption="json"))}


def dataset(root, name, *overrides, labels=False):
    condition = ["condition.source=class_labels", "condition.num_classes=3", "sample.class_labels=[0, 1]"]
    condition = condition if labels else []
    config = load_experiment({}, [f"data.name={name}", f"data.root={root}", "data.resolution=16", *condition,
                                  *overrides])
    return build_dataset(config.data, config.condition)


@pytest.mark.parametrize("kind", WRITERS)
def test_items_equal_the_folder_datasets_from_the_same_images(tmp_path, kind):
    rows = samples(30)
    name, write = WRITERS[kind]
    sharded = dataset(write(tmp_path / kind, rows), name)
    folder = ImageFolderDataset(write_folder(tmp_path / "folder", rows), 16)
    assert len(sharded) == 30 and sum(sharded.chunk_sizes) == 30  # the test split's file is not read
    for i in (0, 7, 8, 29):
        assert torch.equal(sharded[i]["image"], folder[i]["image"]) and sharded[i]["caption"] == folder[i]["caption"]
    labelled = dataset(tmp_path / kind, name, labels=True)
    assert [labelled[i]["label"] for i in range(6)] == [0, 1, 2, 0, 1, 2] and labelled[0]["caption"] == ""


@pytest.mark.parametrize("kind", ["parquet", "tar"])
def test_a_broken_sample_is_skipped_counted_and_replaced_by_the_next(tmp_path, caplog, kind):
    name, write = WRITERS[kind]
    data = dataset(write(tmp_path, samples(20, broken=(5, 6))), name)
    intact = dataset(write(tmp_path / "intact", samples(20)), name)
    with caplog.at_level(logging.WARNING):
        item = data[5]
    assert item["caption"] == "picture number 7" and torch.equal(item["image"], intact[7]["image"])
    first_shard = "train-00000.parquet" if kind == "parquet" else "train-000000.tar"
    assert f"Skipping sample 5 ({tmp_path / first_shard}, sample 5: its image does not decode" in caplog.text
    assert "2 of 20 samples skipped so far" in caplog.text and data.skipped == {5, 6}
    assert data[6]["caption"] == "picture number 7" and len(caplog.records) == 2  # each found once


def test_a_sample_without_a_caption_is_skipped(tmp_path, caplog):
    import webdataset

    rows = samples(4)
    write_tars(tmp_path, rows)
    with webdataset.TarWriter(str(tmp_path / "train-000001.tar")) as tar:  # image only
        tar.write({"__key__": "lonely", "png": rows[0]["image"]})
    data = dataset(tmp_path, "webdataset")
    with caplog.at_level(logging.WARNING):
        assert data[4]["caption"] == "picture number 0"  # wraps round to the first
    assert f"Skipping sample 4 ({tmp_path / 'train-000001.tar'}, sample 0: it has no caption)" in caplog.text


def test_each_chunk_is_read_once_per_shuffle_window(tmp_path, monkeypatch):
    # row groups of 8, 8, 8 and 6 in each file: a short last group must not enlarge what is kept in memory
    data = dataset(write_parquet(tmp_path, samples(60), files=2, row_group=8), "hf", "data.shuffle_window=16")
    reads = []
    data.reader._cache.clear()  # the chunk the build read to check the first sample
    original = type(data.reader)._read_chunk
    monkeypatch.setattr(type(data.reader), "_read_chunk", lambda self, *chunk: reads.append(chunk) or original(
        self, *chunk))
    order = WindowShuffle(data.chunk_sizes, window=16, seed=0)
    cached = []
    for offset in range(60):
        data[order(0, offset)]
        cached.append(sum(data.reader.chunks[c][2] for c in data.reader._cache))
    assert len(reads) == 8 and len(set(reads)) == 8  # 8 row groups, each read once in the epoch
    assert max(cached) <= 16 + 2 * 8  # the window and the two chunks it straddles, never more


@pytest.mark.parametrize("kind", ["parquet", "tar"])
def test_loader_workers_give_the_batches_of_the_main_process(tmp_path, kind):
    name, write = WRITERS[kind]
    data = SeededItems(dataset(write(tmp_path, samples(40)), name, "data.random_flip=true",
                               "data.center_crop=false"), seed=3)

    def batches(workers):
        sampler = StreamSampler(WindowShuffle(data.dataset.chunk_sizes, 16, seed=3), 4, 0, 1)
        loader = iter(DataLoader(data, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=workers))
        return [next(loader) for _ in range(12)]  # past an epoch

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]


@pytest.mark.parametrize("overrides, message", [
    (["data.image_column=picture"], "Config key 'data.image_column' is 'picture', but .*train-00000.parquet has no "
                                    "such column \\(it has image, text, label\\); set it to one of them."),
    (["data.caption_column=caption"], "Config key 'data.caption_column' is 'caption', but .* has no such column"),
    (["data.image_column=label"], "Config key 'data.image_column' is 'label', whose type in .* is int64, not "
                                  "images"),
])
def test_a_wrong_column_is_one_sentence_naming_the_key(tmp_path, overrides, message):
    write_parquet(tmp_path, samples(4))
    with pytest.raises(ConfigError, match=message):
        dataset(tmp_path, "hf", *overrides)


def test_a_missing_label_column_names_its_key(tmp_path):
    write_parquet(tmp_path, samples(4))
    with pytest.raises(ConfigError, match="Config key 'data.label_column' is 'class'"):
        dataset(tmp_path, "hf", "data.label_column=class", labels=True)


@pytest.mark.parametrize("name, root, message", [
    ("webdataset", "{root}/train-{{000000..000009}}.tar", "which matches no .tar file; give a folder of shards or a "
                                                         "pattern such as"),
    ("webdataset", "{root}", "which matches no .tar file"),
    ("hf", "{root}", "which holds no .parquet or .arrow file"),
    ("hf", "{root}/missing", "which is neither a folder nor a hub dataset id"),
])
def test_an_empty_or_missing_root_is_one_sentence(tmp_path, name, root, message):
    with pytest.raises(ConfigError, match=f"Config key 'data.root' is .*{message}"):
        dataset(root.format(root=tmp_path), name)


def test_a_brace_pattern_names_the_shards_it_expands_to(tmp_path):
    write_tars(tmp_path, samples(30), per_shard=10)
    data = dataset(f"{tmp_path}/train-{{000000..000001}}.tar", "webdataset")
    assert len(data) == 20 and data[19]["caption"] == "picture number 19"


def test_root_is_required(tmp_path):
    with pytest.raises(ConfigError, match="Config key 'data.root' is required with data.name=hf"):
        load_experiment({}, ["data.name=hf"])


def test_a_hub_id_that_cannot_be_listed_is_one_sentence(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network here: the hub client refuses at once
    with pytest.raises(ConfigError, match="Config key 'data.root' is 'someone/captions', whose files could not be "
                                          "listed .*; check the id and the network"):
        dataset("someone/captions", "hf")


def test_unreadable_labels_and_captions_and_labels_out_of_range_are_skipped(tmp_path, caplog):
    import webdataset

    rows = samples(3)
    with webdataset.TarWriter(str(tmp_path / "train-000000.tar")) as tar:
        tar.write({"__key__": "a", "png": rows[0]["image"], "txt": b"\xff\xfe not utf-8", "cls": b"x"})
        tar.write({"__key__": "b", "png": rows[1]["image"], "txt": "fine", "cls": 7})
        tar.write({"__key__": "c", "png": rows[2]["image"], "txt": "fine too", "cls": 2})
    with caplog.at_level(logging.WARNING):
        labelled = dataset(tmp_path, "webdataset", labels=True)  # 3 classes: 7 is none of them
        assert labelled[0]["label"] == 2 and labelled.skipped == {0, 1}
        assert dataset(tmp_path, "webdataset")[0]["caption"] == "fine"
    assert "Skipping sample 0" in caplog.text and "it cannot be read" in caplog.text
    assert "its label 7 is not a class id from 0 to 2" in caplog.text


def test_image_paths_are_read_beside_the_dataset_and_only_train_files_are_read(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = samples(3)
    for i, row in enumerate(rows):
        (tmp_path / f"{i}.png").write_bytes(row["image"])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # an Image feature that stores paths
    table = pa.table({"image": pa.array([{"bytes": None, "path": f"{i}.png"} for i in range(3)], image),
                      "text": [r["text"] for r in rows]})
    pq.write_table(table, tmp_path / "train-00000.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "pretrain-00000.parquet")  # another split's file, by its name
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "0.png").write_bytes(samples(5)[4]["image"])  # a same-named file where we run
    monkeypatch.chdir(tmp_path / "elsewhere")
    data = dataset(tmp_path, "hf")
    folder = ImageFolderDataset(write_folder(tmp_path / "folder", rows), 16)
    assert len(data) == 3 and torch.equal(data[0]["image"], folder[0]["image"])
