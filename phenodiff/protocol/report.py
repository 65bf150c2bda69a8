"""Protocol outputs: metrics.json, tables.md, PNG figures and the full system's model card."""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
from pathlib import Path

import numpy as np

from ..hub.model_card import replace_card_section
from ..privacy.accounting import PrivacyLedger
from ..uncertainty.calibration import CalibrationResult, save_reliability_diagram
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .config import ARM_TITLES, ARMS

logger = logging.getLogger(__name__)

GENERATORS = {"plain": "augmented", "full": "full"}  # generator -> the arm that trains on its images


def summarise(values) -> dict:
    """Return mean, sample standard deviation, min, max and the values; None values (undefined) are left out."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def _cell(summary: dict, scale: float = 1.0, digits: int = 2) -> str:
    if summary["mean"] is None:
        return "n/a"
    return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f}"


def _generator_numbers(stage: dict, training: dict) -> dict:
    """Flatten one generator's audit, fidelity, alignment and privacy numbers."""
    audit, fidelity, alignment = stage.get("audit") or {}, stage.get("fidelity") or {}, stage.get("alignment") or {}
    privacy = training.get("privacy")
    public = (training.get("config") or {}).get("privacy", {}).get("public_data")
    # ``epsilon`` is the ledger's total over its components. A component that saw the private images
    # without DP has no finite epsilon, so None stands for it here.
    components = {"autoencoder": "public data" if public else None}
    if privacy:
        ledger = PrivacyLedger.from_state_dict(privacy["ledger"])
        components.update({name: ledger.component_epsilon(name) for name in ledger.components()})
    sliced = (alignment.get("sliced_wasserstein") or {})
    return {
        "epsilon": privacy["epsilon"] if privacy else None,
        "delta": privacy["delta"] if privacy else None,
        "epsilon_per_component": components,
        "noise_multiplier": privacy["noise_multiplier"] if privacy else None,
        "dp_steps": privacy["steps"] if privacy else None,
        "audit_actions": privacy.get("audit_actions") if privacy else None,
        "privacy_risk_estimate": (audit.get("privacy_risk") or {}).get("estimate"),
        "privacy_risk_upper": (audit.get("privacy_risk") or {}).get("upper"),
        "privacy_risk_confidence": (audit.get("privacy_risk") or {}).get("confidence"),
        "copy_rate": audit.get("copy_rate"),
        "mia_auc": audit.get("mia_auc"),
        "frechet_distance": alignment.get("frechet_distance"),
        "sliced_wasserstein_mean": sliced.get("mean"),
        "sliced_wasserstein_per_group": sliced.get("per_group"),
        "fidelity_metric": fidelity.get("metric"),
        "fidelity_generated": fidelity.get("generated"),
        "fidelity_real_test": fidelity.get("real_test"),
        "fidelity_chance": fidelity.get("chance"),
        "requested": stage.get("requested"),
        "released": stage.get("released"),
        "rejected": stage.get("rejected"),
    }


def collect(results: dict) -> dict:
    """Arrange the per-seed stage results as metrics per arm and per generator, with summaries over seeds."""
    per_seed, arms, generators = {}, {arm: [] for arm in ARMS}, {name: [] for name in GENERATORS}
    for seed, stages in results.items():
        entry = {"arms": {arm: stages[arm]["test"] for arm in ARMS}, "generators": {}, "wall_seconds": {}}
        for name in GENERATORS:
            entry["generators"][name] = _generator_numbers(stages[f"{name}_synthetic"], stages[f"{name}_generator"])
            generators[name].append(entry["generators"][name])
        for arm in ARMS:
            arms[arm].append(stages[arm]["test"])
        entry["wall_seconds"] = {stage: value.get("wall_seconds") for stage, value in stages.items()}
        entry["stage_machines"] = {stage: value.get("machine") for stage, value in stages.items()}
        entry["autoencoder"] = stages["autoencoder"]["metrics"]
        per_seed[str(seed)] = entry

    arm_keys = ["accuracy", "macro_f1", "macro_auroc", "bias_gap_percent", "worst_group_accuracy", "ece", "ece_mc_dropout", "aurc"]
    summary = {arm: {key: summarise(r[key] for r in arms[arm]) for key in arm_keys} for arm in ARMS}
    for arm in ARMS:
        summary[arm]["coverage_at_tau"] = summarise(r["deferral"]["coverage"] for r in arms[arm])
        summary[arm]["accuracy_kept_at_tau"] = summarise(r["deferral"]["accuracy_kept"] for r in arms[arm])
        groups = sorted({g for r in arms[arm] for g in r["group_accuracy"]})
        summary[arm]["group_accuracy"] = {g: summarise(r["group_accuracy"].get(g) for r in arms[arm]) for g in groups}
    generator_keys = ["epsilon", "privacy_risk_estimate", "privacy_risk_upper", "copy_rate", "mia_auc", "frechet_distance",
                      "sliced_wasserstein_mean", "fidelity_generated", "fidelity_real_test", "released", "rejected"]
    generator_summary = {name: {key: summarise(g[key] for g in generators[name]) for key in generator_keys} for name in GENERATORS}
    return {"per_seed": per_seed, "summary": summary, "generator_summary": generator_summary}


def tables_markdown(collected: dict, *, dataset: str, seeds: list[int], group_sizes: dict) -> str:
    """Render Tables 1-3 and the generator table as Markdown, mean ± sample standard deviation over seeds."""
    summary, generators = collected["summary"], collected["generator_summary"]
    spread = f"mean ± std over {len(seeds)} seed(s) {seeds}"
    pi_by_arm = {"baseline": None, "augmented": generators["plain"]["privacy_risk_upper"], "full": generators["full"]["privacy_risk_upper"]}
    lines = [f"# Protocol results: {dataset}", "", f"All numbers on the test split, {spread}. Percentages are in points. "
             "Accuracy is per image: the argmax class for single-label data, the fraction of labels right at 0.5 for "
             "multi-label data. The bias gap is the mean absolute deviation of the group accuracies from their mean. "
             "Every arm's classifier trains for the same number of epochs.", ""]

    lines += ["## Table 1: overall performance per arm", "",
              "| arm | accuracy (%) | macro F1 (%) | macro AUROC (%) | bias gap (%) | worst-group accuracy (%) | privacy risk PI (upper bound) |",
              "|---|---|---|---|---|---|---|"]

    for arm in ARMS:
        row = summary[arm]
        pi = "n/a (no generator)" if pi_by_arm[arm] is None else _cell(pi_by_arm[arm], digits=4)
        lines.append(f"| {ARM_TITLES[arm]} | {_cell(row['accuracy'], 100)} | {_cell(row['macro_f1'], 100)} | "
                     f"{_cell(row['macro_auroc'], 100)} | {_cell(row['bias_gap_percent'])} | {_cell(row['worst_group_accuracy'], 100)} | {pi} |")

    lines += ["", "## Table 2: accuracy per demographic group, baseline vs full system", "",
              "| group | test images | baseline (%) | full system (%) | difference (points) |", "|---|---|---|---|---|"]
    for group in sorted(summary["baseline"]["group_accuracy"]):
        base = summary["baseline"]["group_accuracy"][group]
        full = summary["full"]["group_accuracy"].get(group, summarise([]))
        difference = summarise(f - b for f, b in zip(full["values"], base["values"])) if len(full["values"]) == len(base["values"]) else summarise([])
        lines.append(f"| {group} | {group_sizes.get(group, 0)} | {_cell(base, 100)} | {_cell(full, 100)} | {_cell(difference, 100)} |")

    lines += ["", "## Table 3: calibration and deferral per arm", "",
              "| arm | ECE (%) | ECE of the MC-dropout mean (%) | coverage at tau (%) | accuracy on kept images (%) | AURC |",
              "|---|---|---|---|---|---|"]

    for arm in ARMS:
        row = summary[arm]
        lines.append(f"| {ARM_TITLES[arm]} | {_cell(row['ece'], 100)} | {_cell(row['ece_mc_dropout'], 100)} | "
                     f"{_cell(row['coverage_at_tau'], 100)} | {_cell(row['accuracy_kept_at_tau'], 100)} | {_cell(row['aurc'], digits=4)} |")

    lines += ["", "## Generators", "",
              "| generator | epsilon | PI estimate | PI upper bound | copy rate | MIA AUC | Frechet distance | sliced W1 (mean over groups) | "
              "conditional fidelity: generated | real test | released | rejected |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, title in (("plain", "plain LDM (arm 2)"), ("full", "full system (arm 3)")):
        row = generators[name]
        first_seed = next(iter(collected["per_seed"].values()))["generators"][name]["epsilon_per_component"]
        autoencoder = first_seed.get("autoencoder")
        if autoencoder != "public data":
            autoencoder = "no DP" if autoencoder is None else "DP"
        epsilon = ("unbounded (no DP)" if row["epsilon"]["mean"] is None
                   else f"{_cell(row['epsilon'], digits=3)} (total; autoencoder: {autoencoder})")
        lines.append(f"| {title} | {epsilon} | {_cell(row['privacy_risk_estimate'], digits=4)} | {_cell(row['privacy_risk_upper'], digits=4)} | "
                     f"{_cell(row['copy_rate'], digits=4)} | {_cell(row['mia_auc'], digits=3)} | {_cell(row['frechet_distance'], digits=3)} | "
                     f"{_cell(row['sliced_wasserstein_mean'], digits=3)} | {_cell(row['fidelity_generated'], digits=3)} | "
                     f"{_cell(row['fidelity_real_test'], digits=3)} | {_cell(row['released'], digits=0)} | {_cell(row['rejected'], digits=0)} |")

    first = next(iter(collected["per_seed"].values()))["generators"]["plain"]
    parts = next(iter(collected["per_seed"].values()))["generators"]["full"]["epsilon_per_component"]
    described = ", ".join(f"{name} {value:.3f}" if isinstance(value, float) else f"{name}: {'public data' if value else 'no DP'}"
                          for name, value in parts.items())

    lines += ["", f"Full system epsilon by component, first seed (basic composition, delta per component as in metrics.json): {described}."]

    lines += ["", f"Conditional fidelity is the {first['fidelity_metric']} of the baseline classifier (trained on real images only) "
              f"on generated images against the requested labels; chance is {first['fidelity_chance']:.3g}. The Frechet distance and sliced W1 "
              "use the same classifier's penultimate features, generated vs real training images. A generator whose fidelity is near "
              "chance has not learned its conditioning, and the arm that trains on its images tests little more than added noise.", ""]
    return "\n".join(lines)


def _bar_chart(path: Path, categories: list[str], series: dict[str, tuple[list, list]], *, title: str, ylabel: str) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.1 * len(categories) + 2), 4.2), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(categories))
    for i, (name, (means, stds)) in enumerate(series.items()):
        means = [np.nan if m is None else m for m in means]
        stds = [0.0 if s is None else s for s in stds]
        axes.bar(x + (i - (len(series) - 1) / 2) * width, means, width=width, yerr=stds, capsize=3, label=name)
    axes.set_xticks(x)
    axes.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def _scaled(summary: dict, scale: float = 100.0) -> tuple:
    return (None if summary["mean"] is None else scale * summary["mean"], None if summary["std"] is None else scale * summary["std"])


def write_figures(collected: dict, folder: Path) -> list[Path]:
    """Write the metrics-per-arm, accuracy-per-group, reliability and risk-coverage figures."""
    summary, paths = collected["summary"], []
    metrics = [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("macro_auroc", "macro AUROC"),
               ("worst_group_accuracy", "worst-group accuracy"), ("ece", "ECE")]
    series = {}
    for arm in ARMS:
        values = [_scaled(summary[arm][key]) for key, _ in metrics] + [_scaled(summary[arm]["bias_gap_percent"], 1.0)]
        series[ARM_TITLES[arm]] = ([v[0] for v in values], [v[1] for v in values])
    paths.append(_bar_chart(folder / "metrics_per_arm.png", [title for _, title in metrics] + ["bias gap"], series,
                            title="Test metrics per arm (mean ± std over seeds)", ylabel="percent"))

    groups = sorted(summary["baseline"]["group_accuracy"])
    series = {ARM_TITLES[arm]: ([_scaled(summary[arm]["group_accuracy"].get(g, summarise([])))[0] for g in groups],
                                [_scaled(summary[arm]["group_accuracy"].get(g, summarise([])))[1] for g in groups])
              for arm in ("baseline", "full")}
    paths.append(_bar_chart(folder / "accuracy_per_group.png", groups, series, title="Test accuracy per demographic group",
                            ylabel="accuracy (%)"))

    for arm in ARMS:
        paths.append(save_reliability_diagram(_pooled_reliability(collected, arm), folder / f"reliability_{arm}.png",
                                              title=f"{ARM_TITLES[arm]}, all seeds pooled"))
    paths.append(_risk_coverage_figure(collected, folder / "risk_coverage.png"))
    return paths


def _pooled_reliability(collected: dict, arm: str) -> CalibrationResult:
    """Merge the per-seed reliability bins of an arm into one diagram's bins (counts add up)."""
    entries = [seed["arms"][arm]["reliability"] for seed in collected["per_seed"].values()]
    edges = np.asarray(entries[0]["bin_edges"])
    count = np.sum([e["bin_count"] for e in entries], axis=0).astype(float)
    confidence_sum = np.sum([np.nan_to_num(np.asarray(e["bin_confidence"], dtype=float)) * np.asarray(e["bin_count"]) for e in entries], axis=0)
    accuracy_sum = np.sum([np.nan_to_num(np.asarray(e["bin_accuracy"], dtype=float)) * np.asarray(e["bin_count"]) for e in entries], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, confidence_sum / count, np.nan)
        accuracy = np.where(count > 0, accuracy_sum / count, np.nan)
    total = int(count.sum())
    ece = float(np.nansum(count * np.abs(accuracy - confidence)) / max(total, 1))
    return CalibrationResult(ece=ece, num_bins=len(count), bin_edges=edges, bin_count=count.astype(int), bin_confidence=confidence,
                             bin_accuracy=accuracy, num_predictions=total)


def _risk_coverage_figure(collected: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.2), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    colours = {"baseline": "tab:blue", "augmented": "tab:orange", "full": "tab:green"}
    for arm in ARMS:
        for index, seed in enumerate(collected["per_seed"].values()):
            curve = seed["arms"][arm]["risk_coverage"]
            axes.plot(curve["coverage"], curve["risk"], color=colours[arm], alpha=0.8, linewidth=1.2,
                      label=f"{ARM_TITLES[arm]} (AURC {collected['summary'][arm]['aurc']['mean']:.3f})" if index == 0 else None)
    axes.set_xlabel("coverage (fraction of test images kept)")
    axes.set_ylabel("risk (error rate on kept images)")
    axes.set_title("Risk-coverage under MC-dropout deferral, one line per seed", fontsize=9)
    axes.set_xlim(0, 1)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def write_sample_grids(protocol, seed: int, folder: Path) -> list[Path]:
    """Write a grid of generated samples per phenotype for the plain and the full generator of ``seed``."""
    from ..training.validation import grid_ages_of, sample_grid, save_grid_png, validation_phenotypes

    schema, settings = protocol.schema, protocol.settings.synthesis
    phenotypes, rows, columns = validation_phenotypes(list(schema.pathology.vocabulary), schema.pathology.multi_label, grid_ages_of(schema))
    paths = []
    for name in GENERATORS:
        pipeline = protocol._load_pipeline(protocol.output_dir / f"seed-{seed}" / name)
        images = sample_grid(pipeline, phenotypes, num_inference_steps=settings.grid_inference_steps, guidance_scale=settings.guidance_scale, seed=seed)
        paths.append(save_grid_png(images, rows, columns, folder / f"samples_{name}.png", title=f"{schema.name}, {name} generator, seed {seed}"))
    return paths


def _privacy_text(training: dict) -> str:
    """Render the card's privacy section from a generator stage's config and privacy.json."""
    from types import SimpleNamespace

    from ..privacy.dp_diffusion import DP_COMPONENT
    from ..training.config import TrainConfig
    from ..training.diffusion import _privacy_section

    privacy = training["privacy"]
    ledger = PrivacyLedger.from_state_dict(privacy["ledger"])
    result = SimpleNamespace(epsilon=privacy["epsilon"], delta=privacy["delta"], noise_multiplier=privacy["noise_multiplier"],
                             sample_rate=privacy["sample_rate"], global_step=privacy["steps"], stopped_early=privacy["stopped_early"],
                             ledger_state=privacy["ledger"], component_epsilon=ledger.component_epsilon(DP_COMPONENT))
    return _privacy_section(TrainConfig.from_dict(training["config"]), result, autoencoder_dp="autoencoder" in ledger.components())


def write_model_card(protocol, collected: dict, seed: int) -> Path:
    """Fill the full system's model card (first seed's generator) with the protocol's numbers; write it beside metrics.json."""
    card = protocol.output_dir / f"seed-{seed}" / "full" / "pipeline" / "README.md"
    stage = protocol.output_dir / f"seed-{seed}" / "full" / "synthetic" / "result.json"
    synthetic = json.loads(stage.read_text(encoding="utf-8"))
    training = json.loads((protocol.output_dir / f"seed-{seed}" / "full" / "training" / "result.json").read_text(encoding="utf-8"))
    if training.get("privacy"):
        # Rewritten from the stage's ledger, so the card follows the current wording and composition rules.
        replace_card_section(card, "Privacy", _privacy_text(training))
    audit = synthetic.get("audit_card_section", "No images were generated, so no audit was run.")
    audit += ("\n\nThe release filter and this audit compare generated images with the private training images; their "
              f"decisions ({synthetic.get('rejected', 0)} of {synthetic.get('requested', 0)} images rejected) are not covered by the DP "
              "guarantee above. The synthesis plan reads the real per-cell counts of the training split without noise.")
    replace_card_section(card, "Memorisation audit", audit)

    summary, generators = collected["summary"], collected["generator_summary"]
    seeds = len(collected["per_seed"])
    lines = [f"Measured by `phenodiff protocol` on the test split over {seeds} seed(s) (mean ± std); classifiers trained with the same budget.", "",
             "| arm | accuracy (%) | bias gap (%) | worst-group accuracy (%) | ECE (%) |", "|---|---|---|---|---|"]
    for arm in ("baseline", "augmented", "full"):
        row = summary[arm]
        lines.append(f"| {ARM_TITLES[arm]} | {_cell(row['accuracy'], 100)} | {_cell(row['bias_gap_percent'])} | "
                     f"{_cell(row['worst_group_accuracy'], 100)} | {_cell(row['ece'], 100)} |")
    full = generators["full"]
    lines += ["", f"Conditional fidelity of this generator: {_cell(full['fidelity_generated'], digits=3)} on generated images vs "
              f"{_cell(full['fidelity_real_test'], digits=3)} on real test images (same scorer). Groups, labels and the "
              "images released per cell are in `synthesis_plan.csv` of each seed's `full` folder."]
    replace_card_section(card, "Fairness", "\n".join(lines))
    target = protocol.output_dir / "model_card.md"
    atomic_write_text(target, card.read_text(encoding="utf-8"))
    return target


def _stage_seconds_total(folder: Path) -> float:
    """Sum the wall time of every finished stage in the run folder (shared stages once), across all calls."""
    total = 0.0
    for path in folder.glob("**/result.json"):
        total += float(json.loads(path.read_text(encoding="utf-8")).get("wall_seconds") or 0.0)
    return total


def write_report(protocol, results: dict, *, wall_seconds: float) -> dict:
    """Write metrics.json, tables.md, figures/ and model_card.md into the protocol folder; return the metrics."""
    from .runner import machine_description

    collected = collect(results)
    seeds = [int(s) for s in results]
    folder = protocol.output_dir
    test = protocol.dataset.records[protocol.dataset.records["split"] == "test"]
    group_sizes = test["group"].value_counts().to_dict()
    metrics = {
        "dataset": protocol.schema.name,
        "seeds": seeds,
        "split_sizes": {split: len(data) for split, data in protocol.splits.items()},
        **collected,
        "wall_seconds": wall_seconds,
        "stage_wall_seconds_total": _stage_seconds_total(folder),
        "config": protocol._resolved_config(),
        "machine": machine_description(),
    }
    atomic_write_text(folder / "tables.md", tables_markdown(collected, dataset=protocol.schema.name, seeds=seeds, group_sizes=group_sizes))
    figures = write_figures(collected, folder / "figures")
    figures += write_sample_grids(protocol, seeds[0], folder / "figures")
    metrics["figures"] = [str(p.relative_to(folder)) for p in figures]
    metrics["model_card"] = str(write_model_card(protocol, collected, seeds[0]).relative_to(folder))
    atomic_write_json(folder / "metrics.json", metrics)
    logger.info("Protocol outputs written to %s (tables.md, metrics.json, figures/, model_card.md)", folder)
    return metrics
