"""The ``phenodiff`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__

logger = logging.getLogger("phenodiff")


def _add_summary_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "summary",
        help="Validate a dataset, make its patient-level split and print counts per group and label.",
        description=(
            "Load a dataset against its phenotype schema, drop and count invalid rows, make (or read) the "
            "train/val/test split manifest, print counts per demographic group, label and split, and write "
            "summary.txt, summary.json, group_label_counts.png and split_manifest.json to the output folder."
        ),
    )
    parser.add_argument(
        "--dataset",
        default="phantom",
        help="Built-in schema name (phantom, chestxray14, ham10000, oasis1, brats) or path to a schema YAML file. Default: phantom.",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="Folder with the metadata CSV and images. Not needed for the phantom.")
    parser.add_argument("--metadata-file", type=Path, default=None, help="Metadata CSV (may be .gz); defaults to the schema's metadata_file in --data-dir.")
    parser.add_argument(
        "--column-map",
        nargs="*",
        default=[],
        metavar="FIELD=COLUMN",
        help="Map phenotype fields (image, patient_id, age, sex, pathology, extra:NAME) to CSV columns.",
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="Where outputs are written. Default: outputs/summary-DATASET.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the split (and of the phantom). Default: 0.")
    parser.add_argument("--no-image-check", action="store_true", help="Validate the metadata only; do not open images.")
    parser.add_argument("--errors", choices=("drop", "raise"), default="drop", help="Drop and count invalid rows (default) or stop at the first.")
    parser.add_argument("--phantom-patients", type=int, default=800, help="Number of phantom patients to generate. Default: 800.")
    parser.set_defaults(func=run_summary)


def _data_dir_or_phantom(schema, data_dir: Path | None, folder: Path, patients: int, seed: int) -> Path | None:
    """Return ``data_dir``, or for the phantom without one, generate it into ``folder/phantom-data``."""
    if schema.name != "phantom" or data_dir is not None:
        return data_dir
    from .data.phantom import PhantomConfig, generate_phantom

    data_dir = generate_phantom(folder / "phantom-data", PhantomConfig(num_patients=patients, seed=seed))
    logger.info("Phantom dataset in %s", data_dir)
    return data_dir


def run_summary(args: argparse.Namespace) -> int:
    from .data import load_or_make_split, load_pheno_dataset, plot_group_label_counts, resolve_schema, summarize
    from .data.schema import parse_column_mapping
    from .utils.io import atomic_write_json, atomic_write_text

    schema = resolve_schema(args.dataset)
    output_dir = args.output_dir or Path("outputs") / f"summary-{schema.name}"
    output_dir.mkdir(parents=True, exist_ok=True)

    data_dir = _data_dir_or_phantom(schema, args.data_dir, output_dir, args.phantom_patients, args.seed)
    if data_dir is None and args.metadata_file is None:
        print(f"error: dataset {schema.name!r} needs --data-dir (or --metadata-file with --no-image-check).", file=sys.stderr)
        return 2

    dataset = load_pheno_dataset(
        schema,
        data_dir,
        metadata_file=args.metadata_file,
        column_mapping=parse_column_mapping(args.column_map),
        check_images=not args.no_image_check,
        errors=args.errors,
    )

    manifest_path = output_dir / "split_manifest.json"
    load_or_make_split(dataset, manifest_path, seed=args.seed)
    summary = summarize(dataset)

    text = summary.format()
    print(text)
    atomic_write_text(output_dir / "summary.txt", text + "\n")
    atomic_write_json(output_dir / "summary.json", summary.to_dict())
    plot_group_label_counts(summary, output_dir / "group_label_counts.png")
    print(f"\nWrote {output_dir / 'summary.txt'}, summary.json, group_label_counts.png and split_manifest.json in {output_dir}.")
    return 0


def _add_protocol_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "protocol",
        help="Run baseline vs plain augmentation vs the full system and write metrics, tables, figures and a model card.",
        description=(
            "For each seed: train the baseline classifier on real images, a plain conditional LDM and a classifier on real + "
            "its images, and the full system (the config's 'full' generator, planned and audit-filtered synthetic images, "
            "classifier with the bias penalty and MC-dropout deferral); evaluate all three on the test split. Finished "
            "stages in --output-dir are reused and generator training resumes from its latest checkpoint."
        ),
    )
    parser.add_argument("--config", type=Path, default=Path("recipes/configs/protocol_phantom.yaml"),
                        help="Config YAML with the generator sections and a 'protocol' section. Default: recipes/configs/protocol_phantom.yaml.")
    parser.add_argument("--seeds", type=int, default=3, help="Number of seeds (0, 1, ...). Default: 3.")
    parser.add_argument("--output-dir", type=Path, default=None, help="Run folder. Default: outputs/protocol-DATASET.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Overrides the config's data.data_dir.")
    parser.set_defaults(func=run_protocol_command)


def run_protocol_command(args: argparse.Namespace) -> int:
    from .protocol import load_protocol_config, run_protocol

    if args.seeds < 1:
        print(f"error: --seeds must be at least 1, got {args.seeds}.", file=sys.stderr)
        return 2
    base, _ = load_protocol_config(args.config)
    output_dir = args.output_dir or Path("outputs") / f"protocol-{Path(base.data.dataset).stem}"
    metrics = run_protocol(args.config, seeds=list(range(args.seeds)), output_dir=output_dir,
                           data_dir=None if args.data_dir is None else str(args.data_dir))
    print((output_dir / "tables.md").read_text(encoding="utf-8"))
    print(f"Wrote metrics.json, tables.md, figures/ and model_card.md in {output_dir} ({metrics['wall_seconds']:.0f} s in this call; "
          f"the stages took {metrics['stage_wall_seconds_total']:.0f} s in all).")
    return 0


def _add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-array",
        help="Write a dataset's images, resized, and its records into one file that training can read instead of the folders.",
        description=(
            "Load and validate a dataset, resize every image to --resolution and write them (float16 in [0, 1]) with the "
            "records into one safetensors file. Set data.array_file to it in a training or protocol config."
        ),
    )
    parser.add_argument("--dataset", required=True, help="Built-in schema name or path to a schema YAML file.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Folder with the metadata CSV and images (not needed for the phantom).")
    parser.add_argument("--resolution", type=int, default=32, help="Side length of the stored images. Default: 32.")
    parser.add_argument("--output", type=Path, required=True, help="The .safetensors file to write.")
    parser.add_argument("--phantom-patients", type=int, default=800, help="Phantom patients to generate. Default: 800.")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .data import load_pheno_dataset, resolve_schema
    from .data.array_file import export_image_array

    schema = resolve_schema(args.dataset)
    data_dir = _data_dir_or_phantom(schema, args.data_dir, args.output.parent, args.phantom_patients, 0)
    if data_dir is None:
        print(f"error: dataset {schema.name!r} needs --data-dir.", file=sys.stderr)
        return 2
    dataset = load_pheno_dataset(schema, data_dir)
    path = export_image_array(dataset, args.output, resolution=args.resolution)
    print(f"Wrote {len(dataset)} images at {args.resolution}x{args.resolution} to {path} ({path.stat().st_size / 2**20:.1f} MiB).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phenodiff", description="phenodiff command line.")
    parser.add_argument("--version", action="version", version=f"phenodiff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at debug level.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_summary_parser(subparsers)
    _add_protocol_parser(subparsers)
    _add_export_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # accelerate logs one line per file of every checkpoint at INFO level.
        logging.getLogger("accelerate").setLevel(logging.WARNING)

    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:  # the data layer's errors are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
