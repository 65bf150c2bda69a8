#!/usr/bin/env python
"""Score a trained PhenoDiffPipeline: conditional fidelity, Frechet distance and a sample grid.

    python recipes/evaluate_generator.py --config recipes/configs/phantom.yaml
    python recipes/evaluate_generator.py --config recipes/configs/ham10000.yaml --num_images 350

Reads OUTPUT_DIR/pipeline and OUTPUT_DIR/split_manifest.json of the training run named by the config and
writes OUTPUT_DIR/evaluation/fidelity.json and generated_grid.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from phenodiff.evaluation import conditional_fidelity
from phenodiff.pipelines import PhenoDiffPipeline
from phenodiff.training import TrainConfig
from phenodiff.training.data import prepare_dataset
from phenodiff.training.validation import save_grid_png
from phenodiff.utils.io import atomic_write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="The training config of the run to evaluate.")
    parser.add_argument("--output_dir", type=str, default=None, help="Run folder; defaults to the config's output_dir.")
    parser.add_argument("--num_images", type=int, default=350, help="Generated images to score (default 350).")
    parser.add_argument("--scorer_epochs", type=int, default=15, help="Epochs of the independent scoring classifier (default 15).")
    parser.add_argument("--scorer_backbone", type=str, default="resnet18", help="timm backbone of the scorer.")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="Sampling steps (DDPM scheduler of the pipeline).")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Classifier-free guidance weight; defaults to the config's.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the requests, the sampling and the scorer.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = TrainConfig.from_yaml(args.config)
    run = Path(args.output_dir or config.output_dir)
    if not (run / "pipeline" / "model_index.json").is_file():
        print(f"error: no trained pipeline in {run / 'pipeline'}; train it first with recipes/train.py --config {args.config} "
              "or pass the run folder with --output_dir.", file=sys.stderr)
        return 2
    if args.num_images < 1:
        print(f"error: --num_images must be at least 1, got {args.num_images}.", file=sys.stderr)
        return 2
    pipeline = PhenoDiffPipeline.from_pretrained(run / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    dataset = prepare_dataset(config.data, run)
    guidance = args.guidance_scale if args.guidance_scale is not None else config.diffusion.guidance_scale
    report, images, requests = conditional_fidelity(
        pipeline, dataset, resolution=config.data.resolution, num_images=args.num_images, scorer_backbone=args.scorer_backbone,
        scorer_epochs=args.scorer_epochs, num_inference_steps=args.num_inference_steps, guidance_scale=guidance, seed=args.seed,
    )
    result = {"run": str(run), "guidance_scale": guidance, "num_inference_steps": args.num_inference_steps, **report.to_dict()}
    metrics_file = run / "autoencoder" / "metrics.json"
    if metrics_file.is_file():
        result["autoencoder_test_psnr_db"] = json.loads(metrics_file.read_text())["test_psnr_db"]
    out = run / "evaluation"
    atomic_write_json(out / "fidelity.json", result)

    # Grid: up to eight generated images per requested label, one row per label; missing tiles stay blank.
    labels = [r["pathology"] if isinstance(r["pathology"], str) else ("|".join(r["pathology"]) or "no finding") for r in requests]
    titles = sorted(set(labels))[:10]
    tiles = torch.ones(len(titles) * 8, *images.shape[1:])
    for row, label in enumerate(titles):
        indices = [i for i, name in enumerate(labels) if name == label][:8]
        tiles[row * 8 : row * 8 + len(indices)] = images[indices]
    grid = tiles.permute(0, 2, 3, 1).numpy()
    save_grid_png(np.clip(grid, 0, 1), titles, [str(i + 1) for i in range(8)], out / "generated_grid.png",
                  title=f"{dataset.name}: generated images per requested label")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
