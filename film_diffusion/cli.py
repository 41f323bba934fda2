"""film-diffusion: train diffusion models conditioned by FiLM, adaLN-Zero, cross-attention or concatenation on a DiT
or a U-Net, sample from them, and compare the methods side by side on built-in scenes that an oracle scores.

Start with `film-diffusion train configs/quickstart.yaml`; `film-diffusion COMMAND --help` describes each command.
"""

# Each subcommand is a small function here that defers to the module that does the work; user errors are printed
# as one line, never as a traceback.

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from film_diffusion.errors import DISK_FULL, UserError


def _smoke(args: argparse.Namespace) -> None:
    from film_diffusion.smoke import run_smoke

    run_smoke(steps=args.steps)


def _add_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=2, help="training steps per model (default 2)")


def _train_oracle(args: argparse.Namespace) -> None:
    from film_diffusion.cache import cache_dir
    from film_diffusion.evaluation.oracle_training import evaluate_oracle, train_oracle
    from film_diffusion.evaluation.oracle_weights import weights_name

    output = args.output or cache_dir() / weights_name(args.resolution)
    oracle = train_oracle(args.resolution, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                          workers=args.workers)  # fmt: skip
    oracle.save(output)
    scores = evaluate_oracle(oracle, num_images=args.eval_images)
    print(f"saved {output}; accuracy on {args.eval_images} fresh test scenes: "
          + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))  # fmt: skip


def _add_train_oracle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, required=True, help="image size in pixels (16 to 256)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=128, help="scenes per step (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training scenes and weights (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering scenes (default 1)")
    parser.add_argument("--eval-images", type=int, default=2000, help="fresh scenes to report accuracy on")
    parser.add_argument("--output", help="weights file (default: the user cache, where load_oracle looks)")


def _pretrain_clip(args: argparse.Namespace) -> None:
    from film_diffusion.encoders.pretrain_clip import run_pretrain_clip

    run_pretrain_clip(args.config, args.overrides)


def _add_pretrain_clip(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, e.g. configs/clip_builtin.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output_dir=runs/clip train.steps=100")


def _sample(args: argparse.Namespace) -> None:
    from film_diffusion.sample import run_sample

    out = run_sample(args.path, prompts=args.prompt, prompts_file=args.prompts_file, class_labels=args.class_label,
                     steps=args.steps, guidance_scale=args.guidance_scale, scheduler=args.scheduler, seed=args.seed,
                     num_per_prompt=args.num_per_prompt, out=args.out, device=args.device, image=args.image,
                     strength=args.strength, guidance_interval=args.guidance_interval,
                     guidance_rescale=args.guidance_rescale)
    print(f"wrote {out} and its images in {out.with_suffix('')}/")


def _add_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="RUN_OR_PIPELINE", help="a run folder (its pipeline/) or a pipeline folder")
    parser.add_argument("--prompt", action="append", default=[], help="a caption to sample (repeat for more)")
    parser.add_argument("--prompts-file", help="a UTF-8 text file with one caption per line")
    parser.add_argument("--class-label", type=int, nargs="+", action="extend", default=[], metavar="K",
                        help="class ids to sample, for a class-conditional model")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the folder's; a run's pipeline keeps "
                        "its sample.steps)")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale; 1 turns it off "
                        "(default: the folder's; a run's pipeline keeps its sample.guidance_scale)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("START", "STOP"),
                        help="guide only this fraction of the steps, e.g. 0.2 0.8 (default 0 1: every step)")
    parser.add_argument("--guidance-rescale", type=float, help="0 to 1: mix in the guided prediction rescaled to the "
                        "conditional one's standard deviation (Lin et al. 2024; default 0)")
    parser.add_argument("--image", help="image-to-image: an image file every prompt starts from (SDEdit)")
    parser.add_argument("--strength", type=float, help="with --image: the fraction of the steps that re-draw it "
                        "(default 0.8; 1 ignores the image)")
    parser.add_argument("--scheduler", help="sampler: ddpm, ddim, dpm++, euler, euler_a, unipc, flow_euler or a "
                        "diffusers class name (default: the one saved in the folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--num-per-prompt", type=int, default=4, help="images per caption or label (default 4)")
    parser.add_argument("--out", default="samples.png", help="the grid; the images go in the folder of the same "
                        "name without the suffix (default samples.png)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")


def _train(args: argparse.Namespace) -> None:
    from film_diffusion.training.config import load_experiment
    from film_diffusion.training.trainer import train

    config = load_experiment(args.config, args.overrides)
    run = train(config, resume=args.resume)
    inputs = "--class-label K" if config.condition.source == "class_labels" else '--prompt "a caption"'
    print(f"done: {run} (sample with: film-diffusion sample {run} {inputs})")


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=200 seed=1")
    parser.add_argument("--resume", metavar="latest|PATH", help="continue from the run's newest complete "
                        "checkpoint, or from a checkpoints/checkpoint-STEP folder")


def _compare(args: argparse.Namespace) -> None:
    from film_diffusion.studies.compare import compare

    out = compare(args.config, args.overrides)
    print(f"done: {out / 'results.md'}")


def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="compare YAML, e.g. configs/compare_methods.yaml (see configs/README.md)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output_dir=runs/mine "
                        "experiment.train.max_steps=200 matrix.seed=[0,1]")


def _analyze(args: argparse.Namespace) -> None:
    from film_diffusion.studies.analysis import analyze

    out = analyze(args.run_dir, scenes=args.scenes, noise=tuple(args.noise), out=args.out, device=args.device)
    print(f"done: {out / 'analysis.md'}")


def _add_analyze(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a finished run folder whose model is conditioned by film or "
                        "adaln_zero")
    parser.add_argument("--scenes", type=int, help="held-out captions to read and score (default: the run's "
                        "eval.scenes)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.3, 1.0], metavar="SIGMA",
                        help="standard deviations of the noise added to gamma and to beta (default 0.1 0.3 1)")
    parser.add_argument("--out", help="output folder (default RUN/analysis)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")


def _evaluate(args: argparse.Namespace) -> None:
    from film_diffusion.benchmark import run_evaluate

    out = run_evaluate(args.path, suite=args.suite, split=args.split, out=args.out, samples=args.samples,
                       seed=args.seed, batch_size=args.batch_size, steps=args.steps,
                       guidance_scale=args.guidance_scale, device=args.device)  # fmt: skip
    print((out / "results.md").read_text(), end="")
    print(f"done: {out / 'results.json'}")


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    from film_diffusion.evaluation.suite import SUITES

    parser.add_argument("path", metavar="RUN_OR_PIPELINE", help="a run folder (its pipeline/) or a pipeline folder")
    parser.add_argument("--suite", default="full", help=f"categories to run: {', '.join(SUITES)} (default full: "
                        "every category the model can be asked)")
    parser.add_argument("--split", default="val", help="val (default: for tuning) or test (for figures you report)")
    parser.add_argument("--out", help="output folder (default RUN/evaluation/SUITE-SPLIT)")
    parser.add_argument("--samples", type=int, default=200, help="images per category (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed; the prompts are fixed (default 0)")
    parser.add_argument("--batch-size", type=int, default=50, help="images sampled at once (default 50)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the pipeline's)")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: the pipeline's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")


def _summary(args: argparse.Namespace) -> None:
    from film_diffusion.studies.summary import summary

    print(summary(args.study, args.columns))


def _add_summary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="REPORT", help="a comparison's report folder (its report_dir, or "
                        "output_dir), e.g. docs/studies/compare_methods")
    parser.add_argument("columns", nargs="+", metavar="COLUMN", help="color, shape, size, position, all, "
                        "color_and_shape, fid, kid, clip_score, cogent/<metric>, images_per_s, final_loss, "
                        "params, flops")


# name -> (one-line help, add its arguments, run it)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "smoke": (
        "Build every conditioning method on both backbones and run a few forward/backward steps on the CPU.",
        _add_smoke,
        _smoke,
    ),
    "train": (
        "Train a denoiser from an experiment config with Accelerate; the run folder ends with a sampling pipeline.",
        _add_train,
        _train,
    ),
    "sample": (
        "Sample captions or class labels from a run or pipeline folder into a labelled grid and image files.",
        _add_sample,
        _sample,
    ),
    "compare": (
        "Train a matrix of runs (methods x backbones x seeds x any key) under one budget, resumably, and report "
        "them side by side: table, plots, sample grid.",
        _add_compare,
        _compare,
    ),
    "analyze": (
        "The FiLM paper's analyses of a FiLM or adaLN-Zero run: gamma/beta histograms and maps, and the quality "
        "when gamma or beta is replaced by its mean, fixed or noised.",
        _add_analyze,
        _analyze,
    ),
    "evaluate": (
        "Score a run or pipeline on the benchmark suite (single object, two objects, counting, binding, position, "
        "compositional, held-out pairs) with the oracle: accuracies with intervals, one row and PNG per image.",
        _add_evaluate,
        _evaluate,
    ),
    "summary": (
        "Print a comparison's mean ± std table over seeds with the chosen columns (markdown), from its "
        "results.json.",
        _add_summary,
        _summary,
    ),
    "train-oracle": (
        "Train the oracle that reads built-in scenes back from pixels, for one resolution, on the CPU.",
        _add_train_oracle,
        _train_oracle,
    ),
    "pretrain-clip": (
        "Train the built-in small CLIP (open_clip, contrastive) on the built-in scenes and report its accuracy.",
        _add_pretrain_clip,
        _pretrain_clip,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="film-diffusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"film-diffusion {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(f"film-diffusion {args.command}: error: The disk is full ({err.strerror}: '{err.filename}'); free "
              "some space and run the command again (a training run continues with --resume latest).",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
