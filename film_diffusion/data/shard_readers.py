"""Random access to the records of sharded datasets, read in place: Hugging Face datasets as parquet or arrow
files (``data.name: hf``) and WebDataset tar shards (``data.name: webdataset``).

A reader lists its shards and cuts them into *chunks* (parquet row groups, arrow record batches, runs of tar
samples): the units read together, whose sizes :class:`~film_diffusion.training.streams.WindowShuffle` draws
from. Only counts are read when a run starts (parquet footers, arrow batch headers, tar headers); a record's
bytes are read when it is first asked for, and nothing is decoded here. Readers open their files lazily, so
each DataLoader worker opens its own.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import braceexpand
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from webdataset.tariterators import base_plus_ext

from film_diffusion.config import ConfigError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TRAIN_SPLIT = re.compile(r"(^|[/_.-])train([/_.-]|$)")  # train-00000.parquet, data/train/..., not pretrain.parquet
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
TAR_CHUNK = 100  # tar samples read as one chunk (any run can be read; this keeps the shuffle's units small)


@dataclass
class Record:
    """One sample as stored: the image's bytes (None where the sample has none), its caption and label."""

    image: bytes | None
    caption: str | None
    label: int | None


class ShardReader:
    """Chunk sizes in sample order, and record ``index`` read from its chunk, recent chunks kept in memory.
    A subclass fills ``chunks`` (file, part of the file, rows) and reads one."""

    def __init__(self, files: list[str], fs: fsspec.AbstractFileSystem):
        self.files, self.fs = files, fs
        self.cache_rows = 0  # records kept in memory (whole chunks, the newest always); the dataset sets it
        self.chunks: list[tuple[int, int, int]] = []
        self._cache: OrderedDict[int, object] = OrderedDict()

    @property
    def chunk_sizes(self) -> list[int]:
        return [rows for _, _, rows in self.chunks]

    @cached_property
    def starts(self) -> list[int]:
        """The index of each chunk's first record, and the record count last."""
        return [0, *itertools.accumulate(self.chunk_sizes)]

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self) -> dict:  # a DataLoader worker starts with an empty cache
        return {**self.__dict__, "_cache": OrderedDict()}

    def record(self, index: int) -> Record:
        chunk = bisect.bisect_right(self.starts, index) - 1
        if chunk not in self._cache:
            self._cache[chunk] = self._read_chunk(*self.chunks[chunk])
            while len(self._cache) > 1 and sum(self.chunks[c][2] for c in self._cache) > self.cache_rows:
                self._cache.popitem(last=False)
        self._cache.move_to_end(chunk)
        return self._record_in(self._cache[chunk], index - self.starts[chunk])

    def where(self, index: int) -> str:
        """Record ``index``'s file and place in it, for a message."""
        chunk = bisect.bisect_right(self.starts, index) - 1
        file = self.chunks[chunk][0]
        first_in_file = next(k for k, (f, _, _) in enumerate(self.chunks) if f == file)
        return f"{self.files[file]}, sample {index - self.starts[first_in_file]}"

    def _read_chunk(self, file: int, part: int, rows: int) -> object:
        raise NotImplementedError

    def _record_in(self, chunk: object, row: int) -> Record:
        raise NotImplementedError


class TableReader(ShardReader):
    """Parquet or arrow files as Hugging Face ``datasets`` writes them (``to_parquet``, ``save_to_disk``, the
    hub's parquet files): the image column an ``Image`` feature (bytes, or a path beside the files), or raw
    bytes; the caption a string column, the label an integer one. A chunk is a parquet row group or an arrow
    record batch; arrow files (local) are memory-mapped, as ``datasets`` does."""

    def __init__(self, root: str, image_column: str, caption_column: str | None, label_column: str | None):
        fs, files = _table_files(root)
        super().__init__(files, fs)
        self.base = str(root)
        self.image_column, self.caption_column, self.label_column = image_column, caption_column, label_column
        self.columns = [c for c in (image_column, caption_column, label_column) if c is not None]
        self.parquet = files[0].endswith(".parquet")
        self.footers: list[pq.FileMetaData] = []  # parquet: kept, so that reading a row group parses no footer
        for number, file in enumerate(files):
            if self.parquet:
                with fs.open(file, "rb") as f:
                    footer = pq.ParquetFile(f).metadata
                self.footers.append(footer)
                schema = footer.schema.to_arrow_schema()
                sizes = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
            else:
                reader = _open_arrow(file)
                schema, sizes = reader.schema, [batch.num_rows for batch in reader]
            self._check_columns(file, schema)
            self.chunks += [(number, part, rows) for part, rows in enumerate(sizes) if rows]
        self._batches: dict[int, list[pa.RecordBatch]] = {}

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_batches": {}}

    def _check_columns(self, file: str, schema: pa.Schema) -> None:
        keys = {self.image_column: "data.image_column", self.caption_column: "data.caption_column",
                self.label_column: "data.label_column"}
        for column in self.columns:
            if column not in schema.names:
                raise ConfigError(f"Config key '{keys[column]}' is {column!r}, but {file} has no such column (it has "
                                  f"{', '.join(schema.names)}); set it to one of them.")
        kind = schema.field(self.image_column).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_string(kind)
                or (pa.types.is_struct(kind) and {"bytes", "path"} <= {f.name for f in kind})):
            raise ConfigError(f"Config key 'data.image_column' is {self.image_column!r}, whose type in {file} is "
                              f"{kind}, not images (an Image feature, bytes or paths); name the image column.")

    def _read_chunk(self, file: int, part: int, rows: int) -> dict[str, list]:
        if self.parquet:
            with self.fs.open(self.files[file], "rb") as f:
                table = pq.ParquetFile(f, metadata=self.footers[file]).read_row_group(part, columns=self.columns)
            return table.to_pydict()
        if file not in self._batches:
            self._batches[file] = list(_open_arrow(self.files[file]))
        return self._batches[file][part].select(self.columns).to_pydict()

    def _record_in(self, chunk: dict[str, list], row: int) -> Record:
        image = chunk[self.image_column][row]
        if isinstance(image, dict):  # an Image feature: the bytes, or else a path
            image = image["bytes"] if image["bytes"] is not None else image["path"]
        if isinstance(image, str):
            image = self._read_path(image)
        caption = chunk[self.caption_column][row] if self.caption_column else ""
        label = chunk[self.label_column][row] if self.label_column else None
        return Record(image, caption, label)

    def _read_path(self, path: str) -> bytes | None:
        """An image stored by path: absolute, or relative to the dataset's folder; None if it cannot be read."""
        candidates = [path] if Path(path).is_absolute() else [f"{self.base.rstrip('/')}/{path}", path]
        for candidate in candidates:
            try:
                with self.fs.open(candidate, "rb") as f:
                    return f.read()
            except OSError:
                continue
        return None


class TarReader(ShardReader):
    """WebDataset tar shards: members grouped into samples by key (the name up to its first dot, WebDataset's
    convention); the image any of :data:`IMAGE_EXTENSIONS`, the caption the ``.txt`` member or else the
    ``caption_column`` field of the ``.json`` one, the label the ``.cls`` member or the ``label_column`` field."""

    def __init__(self, root: str, caption_column: str | None, label_column: str | None):
        fs, files = _tar_files(root)
        super().__init__(files, fs)
        self.caption_column, self.label_column = caption_column, label_column
        self.index: list[list[dict[str, tuple[int, int]]]] = []  # per file, per sample: extension -> (offset, size)
        for number, file in enumerate(files):
            samples = self._index(file)
            self.index.append(samples)
            self.chunks += [(number, part, min(TAR_CHUNK, len(samples) - part * TAR_CHUNK))
                            for part in range(-(-len(samples) // TAR_CHUNK))]

    def _index(self, file: str) -> list[dict[str, tuple[int, int]]]:
        """Each sample's members, from the tar headers alone (no member is read)."""
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with self.fs.open(file, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    key, extension = base_plus_ext(member.name)
                    if member.isfile() and key is not None:
                        samples.setdefault(key, {})[extension.lower()] = (member.offset_data, member.size)
        except tarfile.TarError as err:
            raise ConfigError(f"Config key 'data.root' names {file}, which is not a readable tar file ({err}); "
                              "remove it or write it again.") from None
        return list(samples.values())

    def _read_chunk(self, file: int, part: int, rows: int) -> list[dict[str, bytes]]:
        with self.fs.open(self.files[file], "rb") as f:
            chunk = []
            for members in self.index[file][part * TAR_CHUNK:part * TAR_CHUNK + rows]:
                sample = {}
                for extension, (offset, size) in members.items():
                    f.seek(offset)
                    sample[extension] = f.read(size)
                chunk.append(sample)
        return chunk

    def _record_in(self, chunk: list[dict[str, bytes]], row: int) -> Record:
        sample = chunk[row]
        image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        fields = _json(sample.get("json"))
        caption = sample["txt"].decode("utf-8") if "txt" in sample else fields.get(self.caption_column)
        label = int(sample["cls"]) if "cls" in sample else fields.get(self.label_column)
        return Record(image, None if caption is None else str(caption), None if label is None else int(label))


def _json(data: bytes | None) -> dict:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _open_arrow(path: str) -> pa.RecordBatchReader:
    """A local arrow file, memory-mapped: the IPC stream ``datasets`` writes, or the IPC file format."""
    try:
        return pa.ipc.open_stream(pa.memory_map(path))
    except pa.ArrowInvalid:
        try:
            reader = pa.ipc.open_file(pa.memory_map(path))
        except pa.ArrowInvalid as err:
            raise ConfigError(f"Config key 'data.root' holds {path}, which is not an arrow file ({err}); remove "
                              "it or write it again.") from None
        return pa.RecordBatchReader.from_batches(
            reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches)))


def _table_files(root: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The parquet files (or else arrow files) of a local folder or a hub dataset, its train split's alone where
    the names say which split a file holds."""
    if not Path(root).exists() and HUB_ID.match(str(root)):
        from huggingface_hub import HfFileSystem

        fs, base = HfFileSystem(), f"datasets/{root}"
    elif Path(root).is_dir():
        fs, base = url_to_fs(str(root))
    else:
        raise ConfigError(f"Config key 'data.root' is '{root}', which is neither a folder nor a hub dataset id; point "
                          "it at a folder of parquet or arrow files or name a dataset as owner/name.")
    try:
        for extension in ("parquet", "arrow") if isinstance(fs, LocalFileSystem) else ("parquet",):
            files = sorted(fs.glob(f"{base}/**/*.{extension}"))
            if files:
                train = [f for f in files if TRAIN_SPLIT.search(Path(f).relative_to(base).as_posix())]
                return fs, train or files
    except Exception as err:  # noqa: BLE001 - whatever the hub client raises (network, access, no such dataset)
        raise ConfigError(f"Config key 'data.root' is '{root}', whose files could not be listed "
                          f"({str(err).splitlines()[0]}); check the id and the network, or point it at a local "
                          "folder.") from None
    raise ConfigError(f"Config key 'data.root' is '{root}', which holds no .parquet or .arrow file; point it at a "
                      "dataset written by datasets' to_parquet or save_to_disk.")


def _tar_files(root: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The shards a brace pattern expands to (those that exist), or the ``.tar`` files of a folder."""
    fs, _ = url_to_fs(str(root))
    if fs.isdir(str(root)):
        files = sorted(fs.glob(f"{str(root).rstrip('/')}/**/*.tar"))
    else:
        files = [f for f in braceexpand.braceexpand(str(root)) if fs.isfile(f)]
    if not files:
        raise ConfigError(f"Config key 'data.root' is '{root}', which matches no .tar file; give a folder of shards "
                          "or a pattern such as shards/train-{000000..000099}.tar.")
    return fs, files
