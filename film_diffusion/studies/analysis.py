"""``film-diffusion analyze RUN``: the FiLM paper's analyses (Perez et al., 2018, section 7) on a trained model
whose condition enters through FiLM or adaLN-Zero.

For every modulated site the model's generators emit a per-channel ``gamma`` (scale) and ``beta`` (shift) from
the caption. This module reads them for the held-out evaluation captions (histograms, and a 2-D PCA map per
site coloured by what each caption names, with the share of their variance each attribute explains), and
measures the oracle's scores when they are changed at every denoiser call: ``gamma`` or ``beta`` replaced by
its mean over the evaluation captions, ``gamma`` set to 1 or ``beta`` to 0, Gaussian noise of growing size
added to each, and, as a check of the machinery, both replaced by their own values (scores unchanged); and
draws the first ``GRID_SCENES`` captions under every change, from the same noise, to show what each does.

The change is made to the model, which is then sampled as usual, guidance included: the unconditional half
of a guided batch keeps its trained values, so guidance still pushes away from the same reference. ``gamma``
and ``beta`` are in the units a site applies: ``gamma * h + beta`` (FiLM's ``1 + delta`` and adaLN-Zero's
``1 + scale`` included). adaLN-Zero's gates are not analysed. Where a generator also reads the timestep, the
mean is taken over the captions at the step's own timestep, and the histograms and maps are drawn at timestep
``MAP_TIMESTEP``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from film_diffusion.conditioning import ModulatingMethod, Modulation, Signals
from film_diffusion.data.shapes import ShapesDataset, scene_class
from film_diffusion.errors import UserError
from film_diffusion.evaluation.quality import evaluate_pipeline, held_out_scenes, scene_inputs
from film_diffusion.grid import labelled_grid
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.sample import load_pipeline
from film_diffusion.training.config import load_experiment

MAP_TIMESTEP = 500
GRID_SCENES = 8  # captions drawn under every ablation in ablation_samples.png
ATTRIBUTES = ("color", "shape", "size", "cell")  # what a one-object full caption names
Edit = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(site index, gamma, beta, the captions' mean (gamma, beta) at this timestep) -> new (gamma, beta); all
``(rows, channels)``, the mean ``(2, channels)``."""


def modulating_methods(denoiser) -> dict[str, ModulatingMethod]:
    """The methods that modulate sites per channel from the condition (FiLM, adaLN-Zero), by name."""
    found = {name: m for name, m in denoiser.conditioner.methods.items()
             if isinstance(m, ModulatingMethod) and m.use_condition}
    if not found:
        raise UserError("analyze needs a model whose condition enters through film or adaln_zero; this one has "
                        f"{', '.join(denoiser.conditioner.methods)}.")
    return found


def affine(modulations: list[Modulation]) -> list[Modulation]:
    """The sites that receive a (gamma, beta) pair: adaLN-Zero's gates are left out."""
    return [m for m in modulations if m.gate is None]


class CaptionDrive:
    """The evaluation captions (or labels) as the conditioning stack reads them, so that what every method gives
    every site for all of them can be computed at any timestep (``ModulatingMethod.modulation``)."""

    def __init__(self, pipe: FilmDiffusionPipeline, scenes: ShapesDataset):
        self.stack = pipe.denoiser.conditioner
        truth = [scenes.scene(i) for i in range(len(scenes))]
        with torch.no_grad():
            text = pipe.text_encoder is not None
            self.condition = pipe.text_encoder.encode([c for _, c in truth]).to(pipe.device) if text else None
        labels = [scene_class(objects) for objects, _ in truth]
        self.labels = torch.tensor(labels, device=pipe.device) if self.stack.label_embedder is not None else None
        self.count = len(truth)

    def signals(self, t_emb: torch.Tensor) -> Signals:
        """The stack's signals for every caption at the timestep of ``t_emb`` ``(1, E)``."""
        with torch.no_grad():
            return self.stack.signals(t_emb.expand(self.count, -1), self.condition, self.labels)


def caption_modulation(method: ModulatingMethod, drive: CaptionDrive, t_emb: torch.Tensor) -> list[Modulation]:
    """What every affine site of ``method`` receives for the captions at the timestep of ``t_emb``: its (gamma,
    beta) as ``(scale, shift)``, each ``(captions, channels)``."""
    with torch.no_grad():
        return affine(method.modulation(drive.signals(t_emb)))


@contextlib.contextmanager
def edited_modulation(denoiser, drive: CaptionDrive, edit: Edit, guided: bool = False) -> Iterator[None]:
    """Every (gamma, beta) the model's FiLM / adaLN-Zero methods give a site for a caption goes through ``edit``
    while the model runs: each method's ``modulation`` is wrapped for the block, and restored afterwards.

    ``guided``: each call's batch is the pipeline's ``[null, caption]`` halves of classifier-free guidance, and
    the null half keeps its trained values. The ablations change what a caption contributes; editing the null
    too would move guidance's reference point instead (replacing its gamma by the captions' mean wrecked every
    sample of a trained model that way)."""
    methods = modulating_methods(denoiser)
    for method in methods.values():
        def edited(signals: Signals, original=method.modulation) -> list[Modulation]:
            means = [(g.mean(0), b.mean(0)) for g, b in
                     ((m.scale, m.shift) for m in affine(original(drive.signals(signals.t_emb[:1]))))]
            rows = slice(len(signals.t_emb) // 2 if guided else 0, None)
            out, k = [], 0
            for m in original(signals):
                if m.gate is None:
                    gamma, beta = m.scale.clone(), m.shift.clone()
                    gamma[rows], beta[rows] = edit(k, gamma[rows], beta[rows], torch.stack(means[k]))
                    m, k = Modulation(m.site, scale=gamma, shift=beta), k + 1
                out.append(m)
            return out

        method.modulation = edited  # an instance attribute, over the class's method
    try:
        yield
    finally:
        for method in methods.values():
            del method.modulation


def ablations(noise: list[float], seed: int = 0) -> dict[str, Edit | None]:
    """The changes the FiLM paper measured, by name; None is the model as trained."""

    def noisy(which: str, sigma: float) -> Edit:
        generator: dict[str, torch.Generator] = {}

        def edit(site, gamma, beta, mean):
            if "g" not in generator:  # one stream per ablation, on the model's device, seeded
                generator["g"] = torch.Generator(gamma.device).manual_seed(seed)
            target = gamma if which == "gamma" else beta
            changed = target + sigma * torch.randn(target.shape, generator=generator["g"], device=target.device,
                                                   dtype=target.dtype)
            return (changed, beta) if which == "gamma" else (gamma, changed)

        return edit

    table: dict[str, Edit | None] = {
        "as trained": None,
        "own values": lambda site, gamma, beta, mean: (gamma.clone(), beta.clone()),
        "gamma := mean": lambda site, gamma, beta, mean: (mean[0].expand_as(gamma), beta),
        "beta := mean": lambda site, gamma, beta, mean: (gamma, mean[1].expand_as(beta)),
        "gamma := 1": lambda site, gamma, beta, mean: (torch.ones_like(gamma), beta),
        "beta := 0": lambda site, gamma, beta, mean: (gamma, torch.zeros_like(beta)),
    }
    for sigma in noise:
        table[f"gamma + N(0, {sigma:g}^2)"] = noisy("gamma", sigma)
        table[f"beta + N(0, {sigma:g}^2)"] = noisy("beta", sigma)
    return table


def attribute_share(vectors: torch.Tensor, labels: list[str]) -> float:
    """The share of the vectors' total variance that lies between the groups ``labels`` makes (R^2 of the
    group means, 1 - within / total): 1 when the vectors cluster perfectly by the attribute, near 0 when they
    ignore it."""
    vectors = vectors.double()
    total = (vectors - vectors.mean(0)).square().sum()
    within = sum((vectors[idx] - vectors[idx].mean(0)).square().sum()
                 for idx in (torch.tensor([i for i, lab in enumerate(labels) if lab == g]) for g in set(labels)))
    return float(1 - within / total) if total > 0 else 0.0


def analyze(run: str | Path, scenes: int | None = None, noise: tuple[float, ...] = (0.1, 0.3, 1.0),
            out: str | Path | None = None, device: str | None = None) -> Path:
    """Every analysis above on the run's final pipeline; writes ``analysis.json``, ``analysis.md`` and the plots
    into ``out`` (default ``RUN/analysis``) and returns it."""
    run = Path(run)
    if scenes is not None and scenes < 2 or any(sigma <= 0 for sigma in noise):
        raise UserError(f"analyze needs at least 2 scenes and positive noise levels, got scenes={scenes} and noise "
                        f"{list(noise)}.")
    if not (run / "pipeline" / "model_index.json").is_file() or not (run / "config.yaml").is_file():
        raise UserError(f"'{run}' is not a finished run folder (config.yaml and pipeline/); pass the output_dir of "
                        "a finished `film-diffusion train`.")
    config = load_experiment(run / "config.yaml")
    if config.data.name != "shapes":
        raise UserError("analyze scores with the oracle, which reads the built-in scenes; this run trained on "
                        f"data.name={config.data.name}.")
    out = Path(out) if out else run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(run / "pipeline").to(device)  # checked: a damaged folder is one sentence
    pipe.set_progress_bar_config(disable=True)
    methods = modulating_methods(pipe.denoiser)
    eval_scenes = held_out_scenes(config.data.resolution, scenes or config.eval.scenes, config.eval.seed,
                                  config.data.holdout)
    drive = CaptionDrive(pipe, eval_scenes)
    with torch.no_grad():
        t_emb = pipe.denoiser.t_embedder(torch.tensor([MAP_TIMESTEP], device=device))
    modulations = {name: caption_modulation(method, drive, t_emb) for name, method in methods.items()}
    parameters = {name: [(m.scale, m.shift) for m in found] for name, found in modulations.items()}
    names = {name: [m.site.name for m in found] for name, found in modulations.items()}
    labels = {a: [str(eval_scenes.scene(i)[0][0][a]) for i in range(len(eval_scenes))] for a in ATTRIBUTES}

    guided = config.sample.guidance_scale > 1
    grid_inputs = scene_inputs(pipe, [eval_scenes.scene(i) for i in range(min(GRID_SCENES, len(eval_scenes)))])
    scores, samples = {}, {}
    for name, edit in tqdm(ablations(list(noise)).items(), desc="ablations"):
        with contextlib.nullcontext() if edit is None else edited_modulation(pipe.denoiser, drive, edit, guided):
            scores[name] = evaluate_pipeline(pipe, eval_scenes, config.sample.steps, config.sample.guidance_scale,
                                             seed=config.eval.seed, batch_size=config.eval.batch_size)
            samples[name] = pipe(**grid_inputs, num_inference_steps=config.sample.steps,
                                 guidance_scale=config.sample.guidance_scale,
                                 generator=torch.Generator(device).manual_seed(config.eval.seed)).images
    clustering = {m: [{a: attribute_share(torch.cat(p, dim=1).cpu(), labels[a]) for a in ATTRIBUTES}
                      for p in params] for m, params in parameters.items()}
    statistics = {m: [{"gamma_mean": g.mean().item(), "gamma_std": g.std().item(), "beta_mean": b.mean().item(),
                       "beta_std": b.std().item()} for g, b in params] for m, params in parameters.items()}
    plots = [plot_histograms(out / "histograms.png", parameters, names),
             plot_maps(out / "pca_maps.png", parameters, names, labels),
             plot_ablations(out / "ablations.png", scores, list(noise)), out / "ablation_samples.png"]
    labelled_grid(list(samples.values()), list(samples)).save(plots[-1])
    result = {"run": str(run), "scenes": len(eval_scenes), "noise": list(noise), "map_timestep": MAP_TIMESTEP,
              "sites": names, "ablations": scores, "clustering": clustering, "statistics": statistics,
              "plots": [p.name for p in plots]}
    (out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "analysis.md").write_text(markdown(result))
    return out


def markdown(result: dict) -> str:
    """The ablation table and the clustering table of ``analysis.json``."""
    scores = result["ablations"]
    metrics = [k for k in ("color", "shape", "size", "position", "all", "color_and_shape", "fid", "clip_score")
               if k in next(iter(scores.values()))]
    base = scores["as trained"]
    lines = [f"# FiLM analysis of {result['run']}", "",
             f"Made by `film-diffusion analyze`; {result['scenes']} held-out captions, scored by the oracle. Each "
             "row changes the model's (gamma, beta) at every denoiser call; the last column is the change of "
             "`all` (or colour+shape) against the model as trained.", "",
             "| change | " + " | ".join(metrics) + " | change of headline |",
             "|---|" + "---:|" * (len(metrics) + 1)]
    headline = "all" if "all" in base else "color_and_shape"
    for name, found in scores.items():
        cells = [f"{found[k]:.3f}" if k not in ("fid", "clip_score") else f"{found[k]:.2f}" for k in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {found[headline] - base[headline]:+.3f} |")
    lines += ["", f"## What the (gamma, beta) vectors cluster by (timestep {result['map_timestep']})", "",
              "Share of the variance of each site's per-caption (gamma, beta) vector that lies between the groups "
              "of one attribute (1: the vectors cluster by it; 0: they ignore it).", "",
              "| method | site | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---:|" * len(ATTRIBUTES)]
    for method, sites in result["clustering"].items():
        for name, shares in zip(result["sites"][method], sites, strict=True):
            lines.append(f"| {method} | {name} | " + " | ".join(f"{shares[a]:.3f}" for a in ATTRIBUTES) + " |")
    lines += ["", *(f"![{p}]({p})" for p in result["plots"]), ""]
    return "\n".join(lines)


def plot_histograms(path: Path, parameters: dict, names: dict) -> Path:
    rows = [(m, name, g, b) for m, params in parameters.items() for name, (g, b) in zip(names[m], params,
                                                                                          strict=True)]
    fig = Figure(figsize=(9, 1.8 * len(rows)))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for r, (method, name, gamma, beta) in enumerate(rows):
        for c, (label, values) in enumerate((("gamma", gamma), ("beta", beta))):
            axes[r][c].hist(values.flatten().float().cpu().numpy(), bins=60, color="C0" if c == 0 else "C1")
            axes[r][c].set_title(f"{method} {name}: {label}", fontsize=8)
            axes[r][c].tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_maps(path: Path, parameters: dict, names: dict, labels: dict[str, list[str]]) -> Path:
    """First, middle and last site of each method: the per-caption (gamma, beta) vectors' first two principal
    components, coloured by each attribute the caption names."""
    chosen = [(m, names[m][i], params[i]) for m, params in parameters.items()
              for i in sorted({0, len(params) // 2, len(params) - 1})]
    fig = Figure(figsize=(3.4 * len(ATTRIBUTES), 3 * len(chosen)))
    axes = fig.subplots(len(chosen), len(ATTRIBUTES), squeeze=False)
    for r, (method, name, (gamma, beta)) in enumerate(chosen):
        vectors = torch.cat([gamma, beta], dim=1).double().cpu()
        centred = vectors - vectors.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ v[:2].T).numpy()
        for c, attribute in enumerate(ATTRIBUTES):
            ax = axes[r][c]
            for k, group in enumerate(sorted(set(labels[attribute]))):
                idx = [i for i, lab in enumerate(labels[attribute]) if lab == group]
                ax.scatter(xy[idx, 0], xy[idx, 1], s=6, label=group, color=matplotlib.colormaps["tab10"](k % 10))
            ax.set_title(f"{method} {name} by {attribute}", fontsize=8)
            ax.legend(fontsize=5, markerscale=1.5)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_ablations(path: Path, scores: dict[str, dict], noise: list[float]) -> Path:
    """Left: each fixed change's headline score; right: the headline score against the noise added to gamma
    and to beta."""
    base = scores["as trained"]
    headline = "all" if "all" in base else "color_and_shape"
    fixed = [k for k in scores if "N(0" not in k]
    fig = Figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2)
    left.barh(fixed, [scores[k][headline] for k in fixed], color="C0")
    left.set_xlabel(headline)
    left.invert_yaxis()
    for which, color in (("gamma", "C0"), ("beta", "C1")):
        ys = [base[headline]] + [scores[f"{which} + N(0, {s:g}^2)"][headline] for s in noise]
        right.plot([0, *noise], ys, marker="o", color=color, label=f"noise on {which}")
    right.set_xscale("symlog", linthresh=min(noise) if noise else 1)
    right.set_xlabel("noise standard deviation")
    right.set_ylabel(headline)
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
