"""Sharded datasets read in place (config names ``hf`` and ``webdataset``): items like the folder dataset's
(``image`` in [-1, 1], ``caption``, and ``label`` for class labels), each decoded when it is read.

Every item is reached by its index, so the run's data stream (:mod:`film_diffusion.training.streams`) draws
them as it draws the built-in scenes: the same batches on 1 or N processes and after a resume. It draws them
chunk by chunk (:class:`~film_diffusion.training.streams.WindowShuffle`), so a worker reads each parquet row
group or tar run once per window rather than once per image. A sample that cannot be used (its image does not
decode, or its caption or label is missing) is skipped when read, with a warning naming it and the count so far,
its place taken by the next usable sample, so every index always gives the same item.
"""

from __future__ import annotations

import io
import logging

from torch.utils.data import Dataset

from film_diffusion.data.folder import UNREADABLE, ImageFolderDataset, decoded_rgb
from film_diffusion.data.shard_readers import Record, ShardReader, TableReader, TarReader
from film_diffusion.errors import UserError

logger = logging.getLogger(__name__)


class ShardedImageDataset(Dataset):
    """The records of ``reader`` as training items, resized and cropped as the folder dataset's; ``num_classes``:
    items carry the record's class label (and an empty caption). The reader keeps the chunks a shuffle window of
    ``window`` samples touches in memory (the window and the two chunks it straddles), so that each is read once
    per window."""

    def __init__(self, reader: ShardReader, window: int, resolution: int, num_classes: int | None,
                 center_crop: bool = True, random_flip: bool = False):
        self.reader, self.num_classes, self.labels = reader, num_classes, num_classes is not None
        reader.cache_rows = window + 2 * max(reader.chunk_sizes or [0])
        self.transform = ImageFolderDataset.make_transform(resolution, center_crop, random_flip)
        self.skipped: set[int] = set()  # the unusable samples found so far (in this process)
        if len(reader) == 0:
            raise UserError(f"The dataset at {reader.files[0]} has no sample; point data.root at one with images.")
        self[0]  # a dataset with no usable sample is refused now, not at the first batch

    @property
    def chunk_sizes(self) -> list[int]:
        return self.reader.chunk_sizes

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        """Item ``index``, or where that sample is unusable the next usable one after it (wrapping round)."""
        for offset in range(len(self)):
            at = (index + offset) % len(self)
            if at in self.skipped:
                continue
            try:
                record = self.reader.record(at)  # a label that is no integer, a caption that is no UTF-8 fail here
            except ValueError as err:
                record, problem = None, f"it cannot be read: {err}"
            else:
                problem = self._problem(record)
            if problem is None:
                try:
                    image = decoded_rgb(io.BytesIO(record.image))
                except UNREADABLE as err:
                    problem = f"its image does not decode: {err}"
            if problem is not None:
                self.skipped.add(at)
                logger.warning("Skipping sample %d (%s: %s); %d of %d samples skipped so far.", at,
                               self.reader.where(at), problem, len(self.skipped), len(self))
                continue
            item = {"image": self.transform(image), "caption": "" if self.labels else record.caption}
            return item | ({"label": record.label} if self.labels else {})
        raise UserError(f"No usable sample is in the dataset at {self.reader.files[0]}; check its image and "
                        "caption columns (data.image_column, data.caption_column).")

    def _problem(self, record: Record) -> str | None:
        if record.image is None:
            return "it has no image"
        if self.labels and record.label is None:
            return "it has no label"
        if self.labels and not 0 <= record.label < self.num_classes:
            return f"its label {record.label} is not a class id from 0 to {self.num_classes - 1}"
        if not self.labels and record.caption is None:
            return "it has no caption"
        return None


def hf_dataset(root: str, image_column: str, caption_column: str, label_column: str, num_classes: int | None,
               window: int, **transform) -> ShardedImageDataset:
    """A Hugging Face dataset's parquet or arrow files (a folder, or a hub id), read in place; ``num_classes``:
    class labels from ``label_column`` (None: captions)."""
    labels = num_classes is not None
    reader = TableReader(root, image_column, None if labels else caption_column, label_column if labels else None)
    return ShardedImageDataset(reader, window, num_classes=num_classes, **transform)


def webdataset_dataset(root: str, caption_column: str, label_column: str, num_classes: int | None, window: int,
                       **transform) -> ShardedImageDataset:
    """WebDataset tar shards (a folder, or a brace pattern), read in place."""
    reader = TarReader(root, caption_column, label_column)
    return ShardedImageDataset(reader, window, num_classes=num_classes, **transform)
