#!/usr/bin/env python
"""Audit a trained PhenoDiffPipeline for memorised training images and fill the audit section of its card.

    python recipes/audit_generator.py --config recipes/configs/phantom.yaml --num_images 1000

Writes OUTPUT_DIR/evaluation/audit.json and replaces the "Memorisation audit" section of
OUTPUT_DIR/pipeline/README.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from phenodiff.pipelines import PhenoDiffPipeline
from phenodiff.privacy.audit.pipeline_audit import audit_pipeline, audit_section, write_audit_into_card
from phenodiff.training import TrainConfig
from phenodiff.training.data import prepare_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="The training config of the run to audit.")
    parser.add_argument("--output_dir", type=str, default=None, help="Run folder; defaults to the config's output_dir.")
    parser.add_argument("--num_images", type=int, default=1000, help="Generated images to audit.")
    parser.add_argument("--false_flag_rate", type=float, default=0.01, help="Rate at which held-out real images may be flagged.")
    parser.add_argument("--delta_pi", type=float, default=0.01, help="Privacy risk threshold to certify PI below.")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="Sampling steps.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the phenotype draws and the sampling.")
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
    report, _ = audit_pipeline(
        pipeline, dataset, resolution=config.data.resolution, num_images=args.num_images, false_flag_rate=args.false_flag_rate,
        delta_pi=args.delta_pi, guidance_scale=config.diffusion.guidance_scale, num_inference_steps=args.num_inference_steps,
        seed=args.seed,
    )
    path = report.write_json(run / "evaluation" / "audit.json")
    section = audit_section(report)
    write_audit_into_card(run / "pipeline" / "README.md", section)
    print(section)
    print(f"\nWrote {path} and the audit section of {run / 'pipeline' / 'README.md'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
