"""The ``sample`` command: load a pipeline folder (or a run's), sample captions or class labels, and
write a labelled grid plus each image beside it."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from film_diffusion.errors import UserError, first_line
from film_diffusion.grid import labelled_grid
from film_diffusion.integrity import verify
from film_diffusion.pipelines import FilmDiffusionPipeline


def pipeline_folder(path: str | Path) -> Path:
    """A pipeline folder itself, or a run folder's ``pipeline/`` (what ``film-diffusion train`` leaves)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"'{path}' does not exist; pass a run folder or a pipeline folder (with model_index.json).")
    for folder in (path, path / "pipeline"):
        if (folder / "model_index.json").is_file():
            return folder
    raise UserError(f"'{path}' is neither a pipeline folder (model_index.json) nor a run folder "
                    "(pipeline/model_index.json); pass one of those.")


def load_pipeline(path: str | Path) -> FilmDiffusionPipeline:
    """``FilmDiffusionPipeline.from_pretrained`` on a checked folder: a missing component or a foreign
    pipeline is one sentence naming the folder, not a traceback from inside diffusers."""
    folder = pipeline_folder(path)
    index_file = folder / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"'{index_file}' is not valid JSON ({err}); save the pipeline again.") from None
    if index.get("_class_name") != FilmDiffusionPipeline.__name__:
        raise UserError(f"'{folder}' holds a {index.get('_class_name')!r} pipeline, not a film-diffusion "
                        "FilmDiffusionPipeline; pass a folder written by FilmDiffusionPipeline.save_pretrained.")
    for name, value in index.items():
        if isinstance(value, list) and value[0] is not None and not (folder / name).is_dir():
            raise UserError(f"'{folder}' is incomplete: model_index.json lists '{name}' but there is no {name}/ "
                            "folder; save the pipeline again or copy the whole folder.")
    verify(folder)  # a folder the trainer wrote lists its files' checksums: a damaged copy is named, not sampled
    bar_was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # loading takes a moment; an error should be the only line printed
    try:
        return FilmDiffusionPipeline.from_pretrained(folder)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"Could not load the pipeline in '{folder}' ({first_line(err)}); save it again or check that "
                        "every component folder is complete.") from None
    finally:
        if bar_was_on:
            diffusers_logging.enable_progress_bar()


def read_prompts(prompts: Sequence[str], prompts_file: str | Path | None) -> list[str]:
    """Prompts from the command line, then one per non-blank line of the file, with control characters (a
    terminal's escape codes, NULs) read as spaces; an empty one is refused (the empty caption is the
    unconditional input, not a prompt). A long prompt is kept: the text encoder reads its first tokens."""
    captions = [without_control_characters(p) for p in prompts]
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"Prompts file '{path}' does not exist; pass a text file with one caption per line.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"Prompts file '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
        lines = (without_control_characters(line) for line in text.splitlines())
        captions += [line for line in lines if line]
    for i, caption in enumerate(captions):
        if not caption.strip():
            raise UserError(f"Prompt {i + 1} is empty; give every prompt some text (guidance already uses the "
                            "model's null condition as the unconditional input).")
    return captions


def without_control_characters(text: str) -> str:
    """Control characters as spaces, runs of white space as one: a prompt as one printable line."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


def run_sample(path: str | Path, prompts: Sequence[str] = (), prompts_file: str | Path | None = None,
               class_labels: Sequence[int] = (), steps: int | None = None, guidance_scale: float | None = None,
               scheduler: str | None = None,
               seed: int = 0, num_per_prompt: int = 4, out: str | Path = "samples.png",
               device: str | None = None, image: str | Path | None = None, strength: float | None = None,
               guidance_interval: Sequence[float] | None = None, guidance_rescale: float | None = None) -> Path:
    """Sample ``num_per_prompt`` images per caption (or class label), write the labelled grid to ``out`` and
    each image into the folder named after it (``samples.png`` -> ``samples/000_00.png``). ``steps`` and
    ``guidance_scale`` default to the folder's (a run's pipeline samples as the run did), the other options to
    the pipeline's (see ``FilmDiffusionPipeline.__call__``); ``image`` is a file every prompt starts from. The same
    seed gives the same bytes."""
    captions = read_prompts(prompts, prompts_file)
    if not captions and not class_labels:
        raise UserError("Nothing to sample: pass --prompt TEXT (or --prompts-file FILE), or --class-label K.")
    if (steps is not None and steps < 1) or num_per_prompt < 1:
        raise UserError("--steps and --num-per-prompt must be at least 1.")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--out '{out}' must end in .png or .jpg.")
    device = choose_device(device)
    options = {"strength": strength, "guidance_interval": guidance_interval, "guidance_rescale": guidance_rescale}
    options = {name: value for name, value in options.items() if value is not None}
    if image is not None:
        options["image"] = read_image(image)
    pipe = load_pipeline(path)
    _check_inputs_fit(pipe, path, captions, class_labels)
    if scheduler is not None:
        pipe.set_scheduler(scheduler)
    pipe.to(device)
    condition = {}
    if captions:
        condition["prompt"] = captions
    if class_labels:
        condition["class_labels"] = list(class_labels)
    images = pipe(**condition, **options, num_inference_steps=steps, guidance_scale=guidance_scale,
                  num_images_per_prompt=num_per_prompt,
                  generator=torch.Generator(device).manual_seed(seed)).images
    labels = _row_labels(captions, class_labels)
    rows = [images[i * num_per_prompt:(i + 1) * num_per_prompt] for i in range(len(labels))]

    out.parent.mkdir(parents=True, exist_ok=True)
    image_folder = out.with_suffix("")
    image_folder.mkdir(exist_ok=True)
    for old in image_folder.iterdir():  # an earlier run's images (only the names this command writes)
        if re.fullmatch(r"\d{3}_\d{2}\.(png|jpe?g)|captions\.txt", old.name):
            old.unlink()
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            image.save(image_folder / f"{r:03d}_{c:02d}{out.suffix}")
    lines = [f"{r:03d} {label}\n" for r, label in enumerate(labels)]  # prompts hold no control characters
    (image_folder / "captions.txt").write_text("".join(lines))
    labelled_grid(rows, labels).save(out)
    return out


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB, or one sentence naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--image '{path}' does not exist; pass an image file (PNG, JPEG, ...).")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as err:
        raise UserError(f"--image '{path}' is not a readable image ({first_line(err)}); pass a PNG or JPEG.") from None


def choose_device(name: str | None) -> torch.device:
    """The --device option, checked before any work: CUDA when there is one by default."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{name}' is not a device; pass cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device '{name}' asks for CUDA, but this machine has no usable GPU; pass --device cpu.")
    return device


def _check_inputs_fit(pipe: FilmDiffusionPipeline, path: str | Path, captions: list[str],
                      class_labels: Sequence[int]) -> None:
    """Prompts for a text model, labels for a class model, both for a model that takes both."""
    takes_text, takes_labels = pipe.text_encoder is not None, pipe.denoiser.null_class_label is not None
    if captions and not takes_text:
        raise UserError(f"'{path}' holds a class-conditional model; pass --class-label K instead of prompts.")
    if class_labels and not takes_labels:
        raise UserError(f"'{path}' holds a text-conditioned model; pass --prompt TEXT instead of class labels.")
    if takes_text and takes_labels and len(captions) != len(class_labels):
        raise UserError(f"'{path}' holds a model that takes a caption and a class label per row; pass as many "
                        f"--class-label values as prompts (got {len(captions)} and {len(class_labels)}).")


def _row_labels(captions: list[str], class_labels: Sequence[int]) -> list[str]:
    if captions and class_labels:
        return [f"{caption} (class {k})" for caption, k in zip(captions, class_labels, strict=True)]
    return captions or [f"class {k}" for k in class_labels]

