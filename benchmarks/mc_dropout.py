"""Time MC dropout against a single forward pass for each tested classifier backbone.

For every backbone it prints four figures side by side. The first is one deterministic pass, the second
MC dropout with T passes as the classifier runs it (trunk once, dropout head T times), and the third their
ratio, which should be at most 1.5. The fourth is T full passes with the dropout head, for comparison.
Single-pass and MC runs alternate, so that load from other processes affects both alike. The fastest of
the repeated runs is reported, because other processes only ever add time (the advice of Python's
``timeit`` documentation).

Run: ``python benchmarks/mc_dropout.py [--batch-size 32] [--passes 20] [--resolution 64] [--threads 2]``
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from phenodiff.classifier import SUPPORTED_BACKBONES, PhenoClassifier


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@torch.no_grad()
def time_backbone(backbone: str, images: torch.Tensor, *, passes: int, repeats: int, full_passes: bool) -> dict:
    """Return the fastest seconds of one pass and of MC dropout, and of T full passes when requested."""
    model = PhenoClassifier(num_outputs=3, backbone=backbone, dropout=0.2, seed=0).eval()
    model(images)
    model.mc_logits(images, num_passes=passes)
    single, mc = [], []
    for _ in range(repeats):
        single.append(_seconds(lambda: model(images)))
        mc.append(_seconds(lambda: model.mc_logits(images, num_passes=passes)))
    result = {"single": min(single), "mc": min(mc), "full": None}
    if full_passes:
        model.dropout.train()
        result["full"] = _seconds(lambda: [model(images) for _ in range(passes)])
        model.eval()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--passes", type=int, default=20, help="T, the number of MC-dropout passes")
    parser.add_argument("--resolution", type=int, default=64, help="side length of the square grayscale images in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (fastest reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--skip-full-passes", action="store_true", help="do not time T full passes (the slow column)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; "
        f"batch {args.batch_size}, {args.resolution}x{args.resolution} grayscale, T = {args.passes}"
    )
    header = f"{'backbone':<16}{'single pass':>14}{'MC (head x T)':>16}{'ratio':>8}{'T full passes':>16}"
    print(header)
    print("-" * len(header))
    images = torch.rand(args.batch_size, 1, args.resolution, args.resolution)
    for backbone in SUPPORTED_BACKBONES:
        timing = time_backbone(
            backbone, images, passes=args.passes, repeats=args.repeats, full_passes=not args.skip_full_passes
        )
        full_text = "skipped" if timing["full"] is None else f"{1000 * timing['full']:.0f} ms"
        ratio = timing["mc"] / timing["single"]
        print(f"{backbone:<16}{1000 * timing['single']:>11.1f} ms{1000 * timing['mc']:>13.1f} ms{ratio:>8.2f}{full_text:>16}")


if __name__ == "__main__":
    main()
