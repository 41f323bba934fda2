"""Training data: the built-in synthetic scenes (``shapes``) and a folder of captioned images (``folder``)."""

from film_diffusion.data.captions import TEMPLATES, caption
from film_diffusion.data.collate import collate
from film_diffusion.data.folder import ImageFolderDataset
from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES

# config name -> dataset class
DATASETS = {"shapes": ShapesDataset, "folder": ImageFolderDataset}

__all__ = ["CELLS", "COLORS", "DATASETS", "SHAPES", "SIZES", "TEMPLATES", "ImageFolderDataset", "ShapesDataset",
           "caption", "collate"]  # fmt: skip
