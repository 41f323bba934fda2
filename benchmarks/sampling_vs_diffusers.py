"""A whole sampling call of our class pipeline against diffusers' DiTPipeline, on the same weights.

    python benchmarks/sampling_vs_diffusers.py                  # CPU
    python benchmarks/sampling_vs_diffusers.py --device cuda    # on a GPU

A random diffusers ``DiTTransformer2DModel`` of DiT-S/2 size (32x32x4 latents, learned sigma, 1000
classes) and ours converted from it with ``load_diffusers_dit``; the same DDIM scheduler, the same tiny
``AutoencoderKL`` (one level, so its decode is a negligible share), the same class labels and seed,
guidance on (both pipelines then run the model on the doubled batch). The two calls take turns after a
warm-up; the table gives the median images/s of each and ours/diffusers. It first checks that both
pipelines return the same images, so the timing compares equal work.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from timing import interleaved_medians

from film_diffusion.convert import load_diffusers_dit
from film_diffusion.cpu_memory import keep_freed_memory
from film_diffusion.pipelines import FilmDiffusionPipeline


def random_dit_s2(seed: int = 0) -> DiTTransformer2DModel:
    """DiT-S/2 in diffusers' class, randomised (its adaLN and output layers start at zero), with every block
    holding block 0's embedders, as checkpoints converted from the paper's do."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                                  num_layers=12, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p[0].numel() ** -0.5 if p.ndim > 1 else 0.02))
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model.eval()


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), block_out_channels=(32,), latent_channels=4,
                         norm_num_groups=32, sample_size=32).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="class labels per call (doubled by guidance)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()

    theirs = random_dit_s2()
    vae = tiny_vae()
    reference = DiTPipeline(transformer=theirs, vae=vae, scheduler=DDIMScheduler()).to(device)
    ours = FilmDiffusionPipeline(load_diffusers_dit(theirs), DDIMScheduler(), vae=vae).to(device)
    for pipe in (reference, ours):
        pipe.set_progress_bar_config(disable=True)
    labels = [(207 + 111 * i) % 1000 for i in range(args.batch)]

    def call(pipe, steps: int = args.steps):
        generator = torch.Generator(device).manual_seed(0)
        return pipe(class_labels=labels, num_inference_steps=steps, guidance_scale=args.guidance,
                    generator=generator, output_type="np").images

    difference = abs(call(ours, 5) - call(reference, 5)).max()
    if difference > 1e-3:
        raise SystemExit(f"The pipelines disagree (max difference {difference:.1e}), so timing them compares "
                         "different work; fix that first.")
    seconds = interleaved_medians({"diffusers DiTPipeline": lambda: call(reference), "ours": lambda: call(ours)},
                                  repeats=args.repeats, warmup=args.warmup, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"DiT-S/2 class pipeline, {args.batch} images per call, {args.steps} DDIM steps, guidance "
          f"{args.guidance}, fp32, {name}; max |ours - diffusers| over a 5-step call: {difference:.1e}\n")
    print("| pipeline | s per call | images/s |")
    print("| --- | --- | --- |")
    for label, s in seconds.items():
        print(f"| {label} | {s:.2f} | {args.batch / s:.3f} |")
    print(f"| ours / diffusers (images/s) | | {seconds['diffusers DiTPipeline'] / seconds['ours']:.2f}x |")


if __name__ == "__main__":
    main()
