#!/usr/bin/env python
"""Train phenodiff's phenotype-conditioned latent diffusion model.

    accelerate launch recipes/train.py --config recipes/configs/phantom.yaml --stage all
    accelerate launch --multi_gpu --num_processes 2 recipes/train.py --config recipes/configs/ham10000.yaml --stage diffusion

Stage 'autoencoder' trains the AutoencoderKL; stage 'diffusion' trains the phenotype encoder and UNet on its
latents and saves the pipeline to OUTPUT_DIR/pipeline; 'all' runs both. Flags override the config file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from accelerate import PartialState

from phenodiff.training import TrainConfig, train_autoencoder, train_diffusion

logger = logging.getLogger("phenodiff.train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "phantom.yaml", help="YAML training config.")
    parser.add_argument("--stage", choices=("autoencoder", "diffusion", "all"), default="all", help="Which stage to train.")
    parser.add_argument("--output_dir", type=str, default=None, help="Run folder (split manifest, checkpoints, samples, pipeline).")
    parser.add_argument("--dataset", type=str, default=None, help="Built-in schema name or schema YAML path.")
    parser.add_argument("--data_dir", type=str, default=None, help="Folder with metadata.csv and images.")
    parser.add_argument("--array_file", type=str, default=None, help="Preprocessed image array (phenodiff export-array) read instead of --data_dir.")
    parser.add_argument("--resolution", type=int, default=None, help="Training image side length in pixels.")
    parser.add_argument("--train_batch_size", type=int, default=None, help="Batch size per process.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=None, help="Batches per optimizer step.")
    parser.add_argument("--learning_rate", type=float, default=None, help="Peak learning rate.")
    parser.add_argument("--lr_scheduler", type=str, default=None, help="diffusers scheduler name: constant, constant_with_warmup, cosine, linear, ...")
    parser.add_argument("--lr_warmup_steps", type=int, default=None, help="Warm-up optimizer steps.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps of the stage.")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help="Autocast precision.")
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=None, help="Keep an EMA of the denoiser weights.")
    parser.add_argument("--checkpointing_steps", type=int, default=None, help="Save a resumable checkpoint every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help="A checkpoint folder or 'latest'.")
    parser.add_argument("--report_to", type=str, default=None, help="Tracker: tensorboard (offline), wandb, or none.")
    parser.add_argument("--validation_steps", type=int, default=None, help="Write a sample grid every N steps.")
    parser.add_argument("--logging_steps", type=int, default=None, help="Log losses, learning rate and images/s every N steps.")
    parser.add_argument("--seed", type=int, default=None, help="Training seed.")
    parser.add_argument("--pretrained_vae_path", type=str, default=None, help="Use this autoencoder instead of OUTPUT_DIR/autoencoder/model.")
    parser.add_argument("--dp", dest="enabled", action="store_true", default=None,
                        help="Train stage 2 with DP-SGD (opacus), and stage 1 too when --autoencoder_epsilon is set.")
    parser.add_argument("--autoencoder_epsilon", type=float, default=None,
                        help="Share of --target_epsilon for DP-SGD on the autoencoder; the denoiser gets the rest.")
    parser.add_argument("--target_epsilon", type=float, default=None, help="Total epsilon the DP run may spend.")
    parser.add_argument("--target_delta", type=float, default=None, help="Delta of the DP guarantee (default 1/(10 N)).")
    parser.add_argument("--noise_multiplicity", type=int, default=None, help="Noise and timestep draws per example under DP.")
    parser.add_argument("--pretrained_pipeline", type=str, default=None, help="Pipeline folder that initialises the DP run.")
    parser.add_argument("--push_to_hub", action="store_true", default=None, help="Upload OUTPUT_DIR/pipeline after training.")
    parser.add_argument("--hub_model_id", type=str, default=None, help="Hub repository id for --push_to_hub.")
    parser.add_argument("--hub_token", type=str, default=None, help="Hub token (defaults to the logged-in token).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "stage", "resume_from_checkpoint", "pretrained_vae_path", "hub_token")}
    config = TrainConfig.from_yaml(args.config).override(args.stage, overrides)
    if config.push_to_hub and not config.hub_model_id:
        print("error: --push_to_hub needs --hub_model_id.", file=sys.stderr)
        return 2
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)

    if args.stage in ("autoencoder", "all"):
        train_autoencoder(config, resume_from_checkpoint=args.resume_from_checkpoint)
    if args.stage in ("diffusion", "all"):
        folder = train_diffusion(config, resume_from_checkpoint=args.resume_from_checkpoint, pretrained_vae_path=args.pretrained_vae_path)
        if config.push_to_hub:
            from phenodiff.hub.model_card import push_pipeline_folder

            url = push_pipeline_folder(folder, config.hub_model_id, token=args.hub_token)
            logger.info("Pushed %s to %s", folder, url)
    PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
