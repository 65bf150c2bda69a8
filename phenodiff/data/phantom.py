"""Procedural chest-radiograph-like phantom: the package's built-in, seeded dataset.

The phantom needs no download. :func:`generate_phantom` writes a folder in the Hugging Face ``datasets``
imagefolder layout (``images/*.png`` plus ``metadata.csv``) that the ``phantom`` schema describes.

Each image is a stylised posteroanterior (PA) chest radiograph: body outline, two dark lung fields,
mediastinum, heart shadow, aortic knob, spine, rib arcs and clavicles. Following the PA convention, the
patient's right side is on the image's left. The anatomy depends on age and sex:

* Males have a wider thorax and taller lungs, and their larger body adds scatter (haze and noise).
  Females have breast shadows over the lower lung fields, densest in young women.
* With age, bone density and rib contrast fall, the aortic knob grows, the heart is slightly larger, and
  haze and noise rise. Older men often have emphysema-like hyperinflation: a low, flat diaphragm and
  darker lungs.

Three pathologies have known ground truth (:data:`PHANTOM_PATHOLOGIES`): cardiomegaly (cardiothoracic ratio
above 0.55), pleural effusion (fluid in one lung base with a meniscus that blunts the costophrenic angle)
and a nodule (a small round opacity in a lung field). A patient can have any subset, and the empty set means
"No Finding".

Demographic groups are age bands (:data:`PHANTOM_AGE_BAND_EDGES`) crossed with sex. By default, young
females and old males are rare (3 % of patients each), and the anatomy hides findings in exactly these
groups. Dense breast tissue overlaps the lower lung fields, where effusions and many nodules sit. Old men
get the most haze and noise, and hyperinflation moves their lung bases. Pixel values come from an
exponential attenuation model, so added tissue also lowers the contrast of a finding behind it. A
classifier trained on the phantom is therefore least accurate on these rare groups
(``tests/test_phantom.py`` measures the gap). Labels are never flipped per group, so the gap comes from the
images alone. ``PhantomConfig.anatomy_masking`` scales the masking anatomy, and 0 turns it off.

Rendering uses vectorised numpy on a coordinate grid. All randomness comes from
``numpy.random.SeedSequence(config.seed)``, so the same configuration writes byte-identical files.

NOTE: Byte-identical output is tested on one machine. numpy's vectorised ``exp`` and ``tanh`` may round
differently on other CPUs or numpy versions, which can change a few 8-bit pixel values.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PHANTOM_PATHOLOGIES = ("cardiomegaly", "effusion", "nodule")
PHANTOM_AGE_BAND_EDGES = (18, 40, 65, 90)
PHANTOM_SEXES = ("female", "male")
PHANTOM_NONE_LABEL = "No Finding"
PHANTOM_VIEW = "PA"
PHANTOM_CONFIG_FILE = "phantom_config.json"
PHANTOM_METADATA_FILE = "metadata.csv"
PHANTOM_IMAGE_DIR = "images"
PHANTOM_METADATA_COLUMNS = (
    "file_name",
    "patient_id",
    "age",
    "sex",
    "pathology",
    "view",
    "image_index",
    "cardiothoracic_ratio",
    "effusion_side",
    "effusion_fraction",
    "nodule_x",
    "nodule_y",
    "nodule_radius",
)

# Bump when a change to the renderer or the sampling changes the files written for a given config, so that
# folders written by an older version are regenerated instead of reused.
PHANTOM_FORMAT_VERSION = 1

# Cardiothoracic ratio at and above which a heart counts as enlarged. Normal hearts stay below it.
CARDIOMEGALY_RATIO = 0.55

_PROGRESS_BAR_MIN_IMAGES = 5000
_NUM_GROUPS = (len(PHANTOM_AGE_BAND_EDGES) - 1) * len(PHANTOM_SEXES)

# Attenuation coefficient of the transfer curve ``intensity = 1 - exp(-ATTENUATION * density)``.
_ATTENUATION = 1.1
# Density of air-filled lung subtracted from the soft tissue of the body.
_LUNG_AIR = 0.85


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of one phantom dataset. Every field is validated on construction.

    ``group_weights`` is the relative share of patients in each demographic group, ordered by age band,
    then sex: ``(18-40 female, 18-40 male, 40-65 female, 40-65 male, 65-90 female, 65-90 male)``. Bands are
    ``[18, 40)``, ``[40, 65)`` and ``[65, 90]`` years. Weights need not sum to 1.

    ``*_prevalence`` fields give, per age band in the same order, the probability that a patient has that
    pathology. Pathologies are drawn independently of each other.

    ``images_per_patient_weights`` are the relative frequencies of patients with 1, 2 and 3 images.

    ``anatomy_masking`` scales the anatomy that hides findings: breast shadow density, hyperinflation, and
    the haze and noise that grow with age. 1.0 is the default phantom, and 0.0 removes them, which is a
    control for experiments on where a group gap comes from. The valid range is [0, 2].

    ``missing_age_fraction`` is the share of patients whose age is left empty in ``metadata.csv``. Their
    images are still rendered with the true age.
    """

    num_patients: int = 800
    image_size: int = 64
    bit_depth: int = 8
    seed: int = 0
    missing_age_fraction: float = 0.0
    group_weights: tuple[float, ...] = (0.03, 0.17, 0.25, 0.25, 0.27, 0.03)
    cardiomegaly_prevalence: tuple[float, float, float] = (0.06, 0.15, 0.30)
    effusion_prevalence: tuple[float, float, float] = (0.08, 0.12, 0.20)
    nodule_prevalence: tuple[float, float, float] = (0.12, 0.15, 0.18)
    images_per_patient_weights: tuple[float, float, float] = (0.45, 0.35, 0.20)
    anatomy_masking: float = 1.0

    def __post_init__(self) -> None:
        _require_int(self.num_patients, "num_patients", minimum=1)
        _require_int(self.image_size, "image_size", minimum=16)
        _require_int(self.seed, "seed", minimum=0)
        if self.bit_depth not in (8, 16) or isinstance(self.bit_depth, bool):
            raise ValueError(f"Invalid bit_depth {self.bit_depth!r}: valid values are 8 and 16.")
        fraction = float(self.missing_age_fraction)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(
                f"Invalid missing_age_fraction {self.missing_age_fraction!r}: it must be in [0, 1)."
            )
        masking = float(self.anatomy_masking)
        if not 0.0 <= masking <= 2.0:
            raise ValueError(f"Invalid anatomy_masking {self.anatomy_masking!r}: it must be in [0, 2].")

        # Values are stored as plain ints, floats and tuples of floats, so the config stays hashable and
        # serialises to JSON the same way whatever numeric types the caller passed.
        for name in ("num_patients", "image_size", "bit_depth", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "missing_age_fraction", fraction)
        object.__setattr__(self, "anatomy_masking", masking)
        object.__setattr__(self, "group_weights", _weights(self.group_weights, "group_weights", _NUM_GROUPS))
        object.__setattr__(
            self,
            "images_per_patient_weights",
            _weights(self.images_per_patient_weights, "images_per_patient_weights", 3),
        )
        for name in ("cardiomegaly_prevalence", "effusion_prevalence", "nodule_prevalence"):
            object.__setattr__(self, name, _probabilities(getattr(self, name), name, 3))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-compatible dictionary (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PhantomConfig":
        """Build a config from :meth:`to_dict` output. Unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown PhantomConfig field(s) {unknown}. Valid fields are {sorted(known)}.")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def _require_int(value: Any, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Invalid {name} {value!r}: it must be an integer >= {minimum}.")
    if value < minimum:
        raise ValueError(f"Invalid {name} {value!r}: it must be an integer >= {minimum}.")


def _weights(values: Sequence[float], name: str, length: int) -> tuple[float, ...]:
    result = tuple(float(v) for v in values)
    if len(result) != length:
        raise ValueError(f"Invalid {name} {values!r}: expected {length} values, got {len(result)}.")
    if any(not math.isfinite(v) or v < 0 for v in result) or sum(result) <= 0:
        raise ValueError(f"Invalid {name} {values!r}: weights must be finite, >= 0 and not all zero.")
    return result


def _probabilities(values: Sequence[float], name: str, length: int) -> tuple[float, ...]:
    result = tuple(float(v) for v in values)
    if len(result) != length:
        raise ValueError(f"Invalid {name} {values!r}: expected {length} values (one per age band), got {len(result)}.")
    if any(not 0.0 <= v <= 1.0 for v in result):
        raise ValueError(f"Invalid {name} {values!r}: each probability must be in [0, 1].")
    return result


# ---------------------------------------------------------------------------------------------- anatomy

ANATOMY_KEYS = (
    "rotation_deg",
    "shift_x",
    "shift_y",
    "scale",
    "soft_tissue",
    "thorax_half_width",
    "mediastinum_half_width",
    "lung_top",
    "dome_level",
    "heart_ratio",
    "enlarged_heart_ratio",
    "aortic_knob_radius",
    "bone_density",
    "rib_spacing",
    "rib_phase",
    "breast_density",
    "breast_size",
    "lung_inflation",
    "scatter",
    "nodule_side",
    "nodule_height",
    "nodule_offset",
    "nodule_radius",
    "nodule_density",
    "effusion_side",
    "effusion_fraction",
)


def _age_fraction(age: float) -> float:
    """Map age in years to [0, 1] over the phantom's range of 18-90 years."""
    low, high = PHANTOM_AGE_BAND_EDGES[0], PHANTOM_AGE_BAND_EDGES[-1]
    return min(max((age - low) / (high - low), 0.0), 1.0)


def sample_anatomy(age: float, sex: str, rng: np.random.Generator, *, anatomy_masking: float = 1.0) -> dict[str, Any]:
    """Draw one patient's anatomy, pose and latent pathology parameters.

    Lengths are in normalised image units, where the image spans [-1, 1] on both axes at ``scale`` 1.
    Sides (``nodule_side``, ``effusion_side``) are the patient's ``"left"`` or ``"right"``. The pathology
    parameters are drawn for every patient but only take effect when :func:`render_phantom` is asked for
    that pathology, so follow-up images of one patient place a finding at the same anatomical spot.
    ``anatomy_masking`` scales breast density and hyperinflation, as in :class:`PhantomConfig`.

    The function always draws the same number of values from ``rng``, whatever the age and sex. Change
    entries of the returned dictionary to place a finding by hand.
    """
    _validate_age_sex(age, sex)
    a = _age_fraction(age)
    male = sex == "male"
    draws = rng.standard_normal(12)
    uniforms = rng.random(13)

    thorax_half_width = (0.70 if male else 0.64) + 0.025 * draws[4]
    anatomy = {
        "rotation_deg": 2.0 * draws[0],
        "shift_x": 0.03 * draws[1],
        "shift_y": 0.03 * draws[2],
        "scale": 1.0 + 0.03 * draws[3],
        # Thicker soft tissue with age lowers contrast everywhere.
        "soft_tissue": 1.0 + 0.08 * a + 0.06 * draws[5],
        "thorax_half_width": thorax_half_width,
        "mediastinum_half_width": 0.10 + 0.01 * draws[6],
        "lung_top": -0.70 + 0.02 * draws[7],
        "dome_level": (0.42 if male else 0.36) + 0.03 * draws[8],
        # Normal hearts reach up to just below CARDIOMEGALY_RATIO, so mild cardiomegaly is a subtle change.
        "heart_ratio": float(np.clip(0.45 + 0.04 * a + 0.03 * draws[9], 0.36, CARDIOMEGALY_RATIO - 0.015)),
        "enlarged_heart_ratio": CARDIOMEGALY_RATIO + 0.005 + 0.085 * uniforms[0],
        "aortic_knob_radius": 0.045 + 0.04 * a + 0.005 * draws[10],
        "bone_density": float(np.clip(1.0 - 0.55 * a + 0.06 * draws[11], 0.3, 1.2)),
        "rib_spacing": 0.15 * thorax_half_width / 0.70,
        "rib_phase": uniforms[1],
        # Breast tissue is denser in younger women.
        "breast_density": 0.0 if male else anatomy_masking * (0.25 + 0.20 * uniforms[2]) * (1.8 - 1.2 * a),
        "breast_size": 0.85 + 0.35 * uniforms[3],
        # Emphysema-like hyperinflation (low flat diaphragm, darker lungs), common in older men.
        "lung_inflation": anatomy_masking * a**2 * (1.5 if male else 0.25) * (0.5 + uniforms[11]),
        # Scatter from a larger body, which scales the haze and noise.
        "scatter": (1.5 if male else 1.0) * (0.85 + 0.3 * uniforms[12]),
        "nodule_side": "right" if uniforms[4] < 0.5 else "left",
        # Fraction of the way from apex to diaphragm, and offset across the lung in units of its half-width.
        "nodule_height": 0.15 + 0.70 * uniforms[5],
        "nodule_offset": -0.6 + 1.2 * uniforms[6],
        "nodule_radius": 0.06 + 0.04 * uniforms[7],
        "nodule_density": 0.30 + 0.20 * uniforms[8],
        "effusion_side": "right" if uniforms[9] < 0.5 else "left",
        # Fraction of the lung height (apex to lateral diaphragm) that the fluid fills at the lateral wall.
        "effusion_fraction": 0.18 + 0.20 * uniforms[10],
    }
    return {key: value if isinstance(value, str) else float(value) for key, value in anatomy.items()}


def _validate_age_sex(age: float, sex: str) -> None:
    if sex not in PHANTOM_SEXES:
        raise ValueError(f"Invalid sex {sex!r}: valid values are {list(PHANTOM_SEXES)}.")
    low, high = PHANTOM_AGE_BAND_EDGES[0], PHANTOM_AGE_BAND_EDGES[-1]
    if not isinstance(age, (int, float, np.integer, np.floating)) or not low <= float(age) <= high:
        raise ValueError(f"Invalid age {age!r}: the phantom renders ages in [{low}, {high}] years.")


def _validate_pathology(pathology: Sequence[str]) -> frozenset[str]:
    if isinstance(pathology, str):
        raise TypeError(f"pathology must be a sequence of labels such as ['nodule'], not the string {pathology!r}.")
    labels = frozenset(pathology)
    unknown = sorted(labels - set(PHANTOM_PATHOLOGIES))
    if unknown:
        raise ValueError(f"Unknown pathology label(s) {unknown}. Valid labels are {list(PHANTOM_PATHOLOGIES)}.")
    return labels


def _validate_anatomy(anatomy: dict[str, Any]) -> None:
    missing = [key for key in ANATOMY_KEYS if key not in anatomy]
    extra = sorted(set(anatomy) - set(ANATOMY_KEYS))
    if missing or extra:
        raise ValueError(
            f"Invalid anatomy dictionary: missing keys {missing}, unknown keys {extra}. "
            "Build it with sample_anatomy() and change values in place."
        )
    for key in ("nodule_side", "effusion_side"):
        if anatomy[key] not in ("left", "right"):
            raise ValueError(f"Invalid anatomy[{key!r}] {anatomy[key]!r}: valid values are 'left' and 'right'.")


# -------------------------------------------------------------------------------------------- rendering


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Map a signed distance (positive inside) to a mask in [0, 1] with an edge about ``4 * width`` wide."""
    return 0.5 + 0.5 * np.tanh(signed / width)


def _ellipse_signed(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse, positive inside."""
    return (1.0 - np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)) * min(a, b)


def _segment_distance(u: np.ndarray, v: np.ndarray, start: tuple[float, float], end: tuple[float, float]) -> np.ndarray:
    du, dv = end[0] - start[0], end[1] - start[1]
    t = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - start[0] - t * du, v - start[1] - t * dv)


def _side_sign(side: str) -> float:
    # PA convention: the patient's right is on the image's left, where u < 0.
    return -1.0 if side == "right" else 1.0


@dataclass(frozen=True)
class _Lung:
    """One lung field: an ellipse whose bottom is cut by a diaphragm dome."""

    center_u: float
    center_v: float
    half_width: float
    half_height: float
    dome_level: float  # v of the diaphragm at the lateral costophrenic angle
    dome_rise: float  # how far the dome top rises above dome_level

    def dome(self, u: np.ndarray) -> np.ndarray:
        """Return the v coordinate of the diaphragm under ``u``."""
        offset = (u - self.center_u) / (1.15 * self.half_width)
        return self.dome_level - self.dome_rise * (1.0 - offset**2)

    def ellipse_signed(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _ellipse_signed(u, v, self.center_u, self.center_v, self.half_width, self.half_height)


def _lung(anatomy: dict[str, Any], sign: float) -> _Lung:
    inner = anatomy["mediastinum_half_width"]
    outer = anatomy["thorax_half_width"] - 0.03
    inflation = anatomy["lung_inflation"]
    # The right hemidiaphragm sits higher than the left, above the liver. Hyperinflation pushes both down
    # and flattens them.
    dome_level = anatomy["dome_level"] - (0.04 if sign < 0 else 0.0) + 0.10 * inflation
    top = anatomy["lung_top"] - 0.03 * inflation
    center_v = dome_level - 0.06
    return _Lung(
        center_u=sign * (inner + outer) / 2,
        center_v=center_v,
        half_width=(outer - inner) / 2,
        half_height=center_v - top,
        dome_level=dome_level,
        dome_rise=0.09 * (1.0 - 0.6 * min(inflation, 1.0)),
    )


def _nodule_center(anatomy: dict[str, Any]) -> tuple[float, float]:
    """Return the nodule center in anatomical coordinates (u, v)."""
    lung = _lung(anatomy, _side_sign(anatomy["nodule_side"]))
    top = lung.center_v - lung.half_height
    v = top + anatomy["nodule_height"] * (lung.dome_level - top)
    # Lung half-width at this height, so the offset keeps the nodule inside the ellipse.
    rel = min(abs(v - lung.center_v) / lung.half_height, 0.95)
    half_width = lung.half_width * math.sqrt(1.0 - rel**2)
    u = lung.center_u + anatomy["nodule_offset"] * half_width
    # Keep the whole nodule above the diaphragm.
    v = min(v, float(lung.dome(np.array(u))) - 1.5 * anatomy["nodule_radius"])
    return u, v


def _body_density(u: np.ndarray, v: np.ndarray, anatomy: dict[str, Any], edge: float) -> np.ndarray:
    """Soft tissue of the trunk and neck, with square shoulders from a superellipse."""
    body_half_width = anatomy["thorax_half_width"] + 0.13
    trunk = (1.0 - ((np.abs(u) / body_half_width) ** 4 + (np.abs(v - 0.35) / 1.25) ** 4) ** 0.25) * body_half_width
    neck = np.minimum(0.2 - np.abs(u), -0.6 - v)
    return 1.25 * anatomy["soft_tissue"] * _soft(np.maximum(trunk, neck), edge)


def _heart_mask(u: np.ndarray, v: np.ndarray, anatomy: dict[str, Any], ratio: float, edge: float) -> np.ndarray:
    """Return the heart silhouette as a mask in [0, 1].

    ``ratio`` is the cardiothoracic ratio: the heart's maximum width over the thorax width.
    """
    half_width = ratio * anatomy["thorax_half_width"]
    half_height = 0.55 * half_width + 0.08
    # About a third of the heart lies right of the midline and two thirds left (image right), resting on
    # the left hemidiaphragm, with its long axis tilted down towards the apex.
    center_u = half_width / 3.0
    center_v = _lung(anatomy, 1.0).dome_level - 0.07 - 0.6 * half_height
    tilt = math.radians(-20.0)
    du, dv = u - center_u, v - center_v
    ru = math.cos(tilt) * du + math.sin(tilt) * dv
    rv = -math.sin(tilt) * du + math.cos(tilt) * dv
    # Pick the semi-axis along the tilted long axis so that the horizontal half-extent of the tilted
    # ellipse, sqrt(a^2 cos^2 + b^2 sin^2), equals half_width.
    a = math.sqrt((half_width**2 - (half_height * math.sin(tilt)) ** 2) / math.cos(tilt) ** 2)
    return _soft(_ellipse_signed(ru, rv, 0.0, 0.0, a, half_height), edge)


def _bone_density(u: np.ndarray, v: np.ndarray, anatomy: dict[str, Any], edge: float) -> np.ndarray:
    """Spine, ribs and clavicles, scaled by the patient's bone density."""
    bone = anatomy["bone_density"]
    thorax_half_width = anatomy["thorax_half_width"]
    lateral = np.abs(u)

    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * v / 0.12)
    spine = 0.25 * vertebrae * _soft(0.065 - lateral, edge)

    # Posterior ribs as periodic arcs that rise over the middle of each hemithorax and slope down laterally.
    arc = v + 1.1 * lateral * (thorax_half_width - lateral) - 0.25 * lateral
    phase = arc / anatomy["rib_spacing"] + anatomy["rib_phase"]
    bands = (0.5 + 0.5 * np.cos(2.0 * np.pi * phase)) ** 3
    thorax = _soft(_ellipse_signed(u, v, 0.0, -0.17, thorax_half_width, 0.62), 2 * edge)
    ribs = 0.15 * bands * thorax * _soft(lateral - 0.07, edge)

    clavicles = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        start = (sign * 0.08, -0.62)
        end = (sign * (thorax_half_width - 0.02), -0.76)
        clavicles += 0.32 * _soft(0.03 - _segment_distance(u, v, start, end), edge)

    return bone * (spine + ribs + clavicles)


def _breast_density(u: np.ndarray, v: np.ndarray, anatomy: dict[str, Any], edge: float) -> np.ndarray:
    """Breast shadows over the lower lung fields, thickest at their lower edge."""
    density = anatomy["breast_density"]
    if density == 0.0:
        return np.zeros_like(u)
    size = anatomy["breast_size"]
    half_width = 0.30 * size * anatomy["thorax_half_width"] / 0.64
    half_height = 0.25 * size
    center_v = anatomy["dome_level"] - 0.03
    # Thickness grows towards the lower edge, which is sharp, while the upper margin fades out.
    ramp = np.clip(0.3 + 0.7 * (v - (center_v - half_height)) / (1.5 * half_height), 0.0, 1.0)
    total = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        center_u = sign * 0.62 * anatomy["thorax_half_width"]
        r2 = ((u - center_u) / half_width) ** 2 + ((v - center_v) / half_height) ** 2
        thickness = np.sqrt(np.clip(1.0 - r2, 0.0, None))
        total += thickness * _soft(1.0 - np.sqrt(r2), edge / half_height)
    return density * ramp * total


def _density_map(
    u: np.ndarray, v: np.ndarray, anatomy: dict[str, Any], labels: frozenset[str], edge: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Return the projected tissue density at each (u, v) and the ground truth in anatomical units."""
    density = _body_density(u, v, anatomy, edge)

    effusion_sign = _side_sign(anatomy["effusion_side"])
    lung_air = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        lung = _lung(anatomy, sign)
        ellipse = lung.ellipse_signed(u, v)
        air = _soft(np.minimum(ellipse, lung.dome(u) - v), edge)
        if "effusion" in labels and sign == effusion_sign:
            # Fluid surface: lowest medially, climbing the lateral chest wall (the meniscus). The fluid also
            # fills the costophrenic recess below the dome, which blunts the angle.
            top = lung.center_v - lung.half_height
            height = anatomy["effusion_fraction"] * (lung.dome_level - top)
            across = np.clip((sign * (u - lung.center_u) / lung.half_width + 1.0) / 2.0, 0.0, 1.0)
            surface = lung.dome_level - height * (0.45 + 0.55 * across**3)
            fluid = _soft(v - surface, 1.5 * edge) * _soft(ellipse, edge)
            air = air * (1.0 - 0.92 * fluid)
        lung_air += air
    # The heart displaces lung: its shadow is soft tissue, so its outline is the border with the air.
    ratio = anatomy["enlarged_heart_ratio"] if "cardiomegaly" in labels else anatomy["heart_ratio"]
    lung_air *= 1.0 - 0.9 * _heart_mask(u, v, anatomy, ratio, edge)
    density -= _LUNG_AIR * (1.0 + 0.15 * anatomy["lung_inflation"]) * lung_air

    knob_radius = anatomy["aortic_knob_radius"]
    knob_u = anatomy["mediastinum_half_width"] + 0.3 * knob_radius
    density += 0.45 * _soft(knob_radius - np.hypot(u - knob_u, v + 0.40), edge)

    trachea = _soft(0.03 - np.abs(u), edge) * _soft(-0.42 - v, 2 * edge)
    density -= 0.35 * trachea

    density += _bone_density(u, v, anatomy, edge)
    density += _breast_density(u, v, anatomy, edge)

    truth: dict[str, Any] = {"cardiothoracic_ratio": ratio}
    if "nodule" in labels:
        nodule_u, nodule_v = _nodule_center(anatomy)
        radius = anatomy["nodule_radius"]
        r2 = ((u - nodule_u) ** 2 + (v - nodule_v) ** 2) / radius**2
        # Thickness profile of a sphere, softened at the rim.
        sphere = np.sqrt(np.clip(1.0 - r2, 0.0, None)) * _soft(1.0 - np.sqrt(r2), edge / radius)
        density += anatomy["nodule_density"] * sphere
        truth["nodule"] = (nodule_u, nodule_v, radius)
    return density, truth


def render_phantom(
    age: float,
    sex: str,
    pathology: Sequence[str],
    *,
    image_size: int = 64,
    rng: np.random.Generator,
    anatomy: dict[str, Any] | None = None,
    anatomy_masking: float = 1.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one phantom radiograph and return it with its ground truth.

    Args:
        age: Age in years, in [18, 90].
        sex: ``"female"`` or ``"male"``.
        pathology: Labels from :data:`PHANTOM_PATHOLOGIES`. An empty sequence renders "No Finding".
        image_size: Width and height in pixels, at least 16.
        rng: Source of the per-patient anatomy (when ``anatomy`` is None) and the per-image pose jitter,
            exposure, haze and noise. The number of values drawn does not depend on ``pathology``, so two
            calls with generators in the same state and the same anatomy differ only by the findings.
        anatomy: A dictionary from :func:`sample_anatomy`, to render several images of one patient.
            When None, a new anatomy is drawn from ``rng``.
        anatomy_masking: Scale of the haze and noise, as :attr:`PhantomConfig.anatomy_masking`. When the
            anatomy is drawn here, it also scales breast density and hyperinflation.

    Returns:
        ``(image, truth)``. ``image`` is a float32 array of shape ``(image_size, image_size)`` with values
        in [0, 1], bright where tissue attenuates more. ``truth`` has the keys of the ground-truth columns
        of ``metadata.csv``:

        * ``cardiothoracic_ratio``: heart width over thorax width, always set.
        * ``effusion_side``: ``"left"`` or ``"right"`` (the patient's side), ``""`` without effusion.
        * ``effusion_fraction``: share of the lung height filled by fluid at the lateral wall.
        * ``nodule_x``, ``nodule_y``: column and row of the nodule center in pixels, with pixel centers
          at integers.
        * ``nodule_radius``: in pixels.

        Numeric values of absent findings are NaN.
    """
    _validate_age_sex(age, sex)
    labels = _validate_pathology(pathology)
    _require_int(image_size, "image_size", minimum=16)
    if anatomy is None:
        anatomy = sample_anatomy(age, sex, rng, anatomy_masking=anatomy_masking)
    else:
        _validate_anatomy(anatomy)
    a = _age_fraction(float(age))

    # All per-image draws happen here, before any pathology-dependent work.
    jitter = rng.standard_normal(6)
    haze_draws = rng.random(2)
    noise = rng.standard_normal((image_size, image_size))

    rotation = math.radians(anatomy["rotation_deg"] + 1.0 * jitter[0])
    shift_x = anatomy["shift_x"] + 0.015 * jitter[1]
    shift_y = anatomy["shift_y"] + 0.015 * jitter[2]
    scale = anatomy["scale"] * math.exp(0.015 * jitter[3])

    # Pixel centers in normalised image coordinates. x runs along the columns and y down the rows.
    coords = (np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0
    x, y = np.meshgrid(coords, coords)
    cos, sin = math.cos(rotation), math.sin(rotation)
    u = (cos * (x - shift_x) + sin * (y - shift_y)) / scale
    v = (-sin * (x - shift_x) + cos * (y - shift_y)) / scale
    # Edges blur over about 4 * edge: at least one pixel, so small images do not alias, and a fixed
    # anatomical width at large sizes.
    edge = max(0.01, 0.6 / image_size)

    density, anatomical_truth = _density_map(u, v, anatomy, labels, edge)
    image = 1.0 - np.exp(-_ATTENUATION * np.clip(density, 0.0, None))

    # Exposure: gamma and gain vary per image like detector and technique settings do.
    image = image ** math.exp(0.06 * jitter[4]) * (1.0 + 0.04 * jitter[5])

    # Haze (scatter) blends in a smooth fog, which lowers contrast. Haze and noise grow with age.
    haze = anatomy_masking * (0.04 + 0.30 * a**1.5) * anatomy["scatter"] * (0.9 + 0.2 * haze_draws[0])
    angle = 2.0 * math.pi * haze_draws[1]
    fog = 0.55 + 0.15 * (math.cos(angle) * x + math.sin(angle) * y)
    image = (1.0 - haze) * image + haze * fog
    noise_sigma = 0.012 + anatomy_masking * 0.045 * a * anatomy["scatter"]
    image = np.clip(image + noise_sigma * noise, 0.0, 1.0).astype(np.float32)

    truth = _ground_truth(anatomy, labels, anatomical_truth, rotation, shift_x, shift_y, scale, image_size)
    return image, truth


def _ground_truth(
    anatomy: dict[str, Any],
    labels: frozenset[str],
    anatomical_truth: dict[str, Any],
    rotation: float,
    shift_x: float,
    shift_y: float,
    scale: float,
    image_size: int,
) -> dict[str, Any]:
    truth: dict[str, Any] = {
        "cardiothoracic_ratio": float(anatomical_truth["cardiothoracic_ratio"]),
        "effusion_side": anatomy["effusion_side"] if "effusion" in labels else "",
        "effusion_fraction": float(anatomy["effusion_fraction"]) if "effusion" in labels else math.nan,
        "nodule_x": math.nan,
        "nodule_y": math.nan,
        "nodule_radius": math.nan,
    }
    if "nodule" in anatomical_truth:
        nodule_u, nodule_v, radius = anatomical_truth["nodule"]
        cos, sin = math.cos(rotation), math.sin(rotation)
        x = scale * (cos * nodule_u - sin * nodule_v) + shift_x
        y = scale * (sin * nodule_u + cos * nodule_v) + shift_y
        pixels_per_unit = image_size / 2.0
        truth["nodule_x"] = (x + 1.0) * pixels_per_unit - 0.5
        truth["nodule_y"] = (y + 1.0) * pixels_per_unit - 0.5
        truth["nodule_radius"] = radius * scale * pixels_per_unit
    return truth


# ------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    age: float
    sex: str
    labels: tuple[str, ...]
    num_images: int
    age_missing: bool
    seed: np.random.SeedSequence


def _sample_patients(config: PhantomConfig) -> list[_Patient]:
    """Draw demographics, labels and image counts for every patient, plus one seed per patient."""
    population_seed, missing_seed, patients_seed = np.random.SeedSequence(config.seed).spawn(3)
    rng = np.random.default_rng(population_seed)
    count = config.num_patients

    group_weights = np.asarray(config.group_weights)
    groups = rng.choice(_NUM_GROUPS, size=count, p=group_weights / group_weights.sum())
    bands = groups // len(PHANTOM_SEXES)
    sexes = groups % len(PHANTOM_SEXES)

    edges = np.asarray(PHANTOM_AGE_BAND_EDGES, dtype=float)
    low, high = edges[bands], edges[bands + 1]
    # Ages are rounded to 0.1 year. Keep the rounded value inside its half-open band, except in the last
    # band, which is closed at 90.
    last_band = len(edges) - 2
    high = np.where(bands == last_band, high, high - 0.1)
    ages = np.round(low + (high - low) * rng.random(count), 1)

    prevalence = np.array(
        [config.cardiomegaly_prevalence, config.effusion_prevalence, config.nodule_prevalence]
    ).T  # shape (age band, pathology)
    has_pathology = rng.random((count, len(PHANTOM_PATHOLOGIES))) < prevalence[bands]

    image_weights = np.asarray(config.images_per_patient_weights)
    num_images = 1 + rng.choice(len(image_weights), size=count, p=image_weights / image_weights.sum())

    # A separate stream, so changing the missing fraction leaves demographics and images unchanged.
    age_missing = np.random.default_rng(missing_seed).random(count) < config.missing_age_fraction

    width = max(5, len(str(count - 1)))
    patient_seeds = patients_seed.spawn(count)
    return [
        _Patient(
            patient_id=f"p{index:0{width}d}",
            age=float(ages[index]),
            sex=PHANTOM_SEXES[sexes[index]],
            labels=tuple(label for label, present in zip(PHANTOM_PATHOLOGIES, has_pathology[index]) if present),
            num_images=int(num_images[index]),
            age_missing=bool(age_missing[index]),
            seed=patient_seeds[index],
        )
        for index in range(count)
    ]


def _to_pixels(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Quantise a [0, 1] float image to uint8 (PIL mode 'L') or uint16 (PIL mode 'I;16')."""
    if bit_depth == 16:
        return np.round(image * 65535.0).astype(np.uint16)
    return np.round(image * 255.0).astype(np.uint8)


def _format_float(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def _write_dataset(folder: Path, config: PhantomConfig) -> int:
    """Render every image into ``folder`` and write ``metadata.csv``. Return the number of images."""
    patients = _sample_patients(config)
    total = sum(patient.num_images for patient in patients)
    (folder / PHANTOM_IMAGE_DIR).mkdir()

    rows = []
    with _progress_bar(total) as progress:
        for patient in patients:
            rng = np.random.default_rng(patient.seed)
            anatomy = sample_anatomy(patient.age, patient.sex, rng, anatomy_masking=config.anatomy_masking)
            for image_index in range(patient.num_images):
                image, truth = render_phantom(
                    patient.age,
                    patient.sex,
                    patient.labels,
                    image_size=config.image_size,
                    rng=rng,
                    anatomy=anatomy,
                    anatomy_masking=config.anatomy_masking,
                )
                file_name = f"{PHANTOM_IMAGE_DIR}/{patient.patient_id}_{image_index:03d}.png"
                Image.fromarray(_to_pixels(image, config.bit_depth)).save(folder / file_name, format="PNG")
                rows.append(
                    [
                        file_name,
                        patient.patient_id,
                        "" if patient.age_missing else f"{patient.age:.1f}",
                        patient.sex,
                        "|".join(patient.labels) or PHANTOM_NONE_LABEL,
                        PHANTOM_VIEW,
                        str(image_index),
                        _format_float(truth["cardiothoracic_ratio"], 4),
                        truth["effusion_side"],
                        _format_float(truth["effusion_fraction"], 4),
                        _format_float(truth["nodule_x"], 2),
                        _format_float(truth["nodule_y"], 2),
                        _format_float(truth["nodule_radius"], 2),
                    ]
                )
                progress.update(1)

    with open(folder / PHANTOM_METADATA_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(PHANTOM_METADATA_COLUMNS)
        writer.writerows(rows)
    return total


class _NullProgress:
    def __enter__(self) -> "_NullProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, count: int) -> None:
        return None


def _progress_bar(total: int) -> Any:
    if total < _PROGRESS_BAR_MIN_IMAGES:
        return _NullProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NullProgress()
    return tqdm(total=total, desc="Rendering phantom", unit="image")


def _config_record(config: PhantomConfig) -> dict[str, Any]:
    return {"format_version": PHANTOM_FORMAT_VERSION, "config": config.to_dict()}


def read_phantom_config(folder: str | os.PathLike) -> PhantomConfig | None:
    """Return the config that wrote the phantom in ``folder``.

    Returns None when the folder has no readable ``phantom_config.json`` or was written by another
    version of the generator (its files would differ from what this version writes).
    """
    record = _read_config_record(Path(folder))
    if record is None or record.get("format_version") != PHANTOM_FORMAT_VERSION:
        return None
    try:
        return PhantomConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError):
        return None


def _read_config_record(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / PHANTOM_CONFIG_FILE, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _folder_state(folder: Path, record: dict[str, Any]) -> str:
    """Classify ``folder`` as 'absent', 'empty', 'match', 'mismatch' or 'foreign' (not a phantom folder)."""
    if not folder.exists():
        return "absent"
    if not folder.is_dir():
        raise ValueError(f"Cannot write the phantom to {folder}: it exists and is not a folder. Choose another path.")
    if not any(folder.iterdir()):
        return "empty"
    if not (folder / PHANTOM_CONFIG_FILE).exists():
        return "foreign"
    complete = (folder / PHANTOM_METADATA_FILE).is_file() and (folder / PHANTOM_IMAGE_DIR).is_dir()
    return "match" if complete and _read_config_record(folder) == record else "mismatch"


def _sibling(folder: Path, purpose: str) -> Path:
    return folder.parent / f".{folder.name}.{purpose}-{os.getpid()}-{secrets.token_hex(4)}"


def generate_phantom(
    output_dir: str | os.PathLike, config: PhantomConfig = PhantomConfig(), *, overwrite: bool = False
) -> Path:
    """Write a phantom dataset into ``output_dir`` and return ``output_dir`` as a ``Path``.

    The folder receives ``images/<patient_id>_<image_index>.png`` (8-bit mode 'L' or 16-bit mode 'I;16'
    PNG, as ``config.bit_depth`` sets), ``metadata.csv`` with :data:`PHANTOM_METADATA_COLUMNS`, and
    ``phantom_config.json``. The data is rendered into a temporary sibling folder and renamed into place, so
    ``output_dir`` never contains a partial dataset.

    An existing ``output_dir`` is handled as follows:

    * Written with the same config by this generator version: returned as it is, unless ``overwrite``.
    * Written with another config or version: ``ValueError``, unless ``overwrite``, which replaces it.
    * Empty: filled.
    * Not empty and without ``phantom_config.json``: ``ValueError`` even with ``overwrite``, because the
      folder may contain other data that this function must not delete.

    The columns of ``metadata.csv`` are:

    * ``file_name``: image path relative to ``output_dir``.
    * ``patient_id``: shared by the 1-3 images of a patient.
    * ``age``: years with one decimal, empty when missing.
    * ``sex``: ``female`` or ``male``.
    * ``pathology``: labels joined with ``|``, or ``No Finding``.
    * ``view``: always ``PA``.
    * ``image_index``: 0-based follow-up number within the patient.
    * the ground truth of :func:`render_phantom`, with empty cells for absent findings.
    """
    output_dir = Path(output_dir)
    record = _config_record(config)
    state = _folder_state(output_dir, record)
    if state == "match" and not overwrite:
        logger.info("Reusing the phantom in %s, which was written with the same config.", output_dir)
        return output_dir
    if state == "mismatch" and not overwrite:
        raise ValueError(
            f"The folder {output_dir} contains a phantom written with a different config or generator version. "
            "Pass overwrite=True to replace it, or choose another folder."
        )
    if state == "foreign":
        raise ValueError(
            f"The folder {output_dir} is not empty and has no {PHANTOM_CONFIG_FILE}, so it is not a phantom "
            "folder and will not be replaced. Choose another folder or empty this one."
        )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(output_dir, "tmp")
    staging.mkdir()
    start = time.perf_counter()
    try:
        total = _write_dataset(staging, config)
        with open(staging / PHANTOM_CONFIG_FILE, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        _move_into_place(staging, output_dir, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "Wrote a phantom of %d patients and %d images to %s in %.1f s.",
        config.num_patients,
        total,
        output_dir,
        time.perf_counter() - start,
    )
    return output_dir


def _move_into_place(staging: Path, output_dir: Path, record: dict[str, Any]) -> None:
    """Rename ``staging`` to ``output_dir``, replacing an existing folder there."""
    displaced = None
    if output_dir.exists():
        if any(output_dir.iterdir()):
            displaced = _sibling(output_dir, "old")
            os.rename(output_dir, displaced)
        else:
            output_dir.rmdir()
    try:
        os.rename(staging, output_dir)
    except OSError:
        # Another process may have written the same phantom between the check and the rename.
        if _folder_state(output_dir, record) != "match":
            raise
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        if displaced is not None:
            shutil.rmtree(displaced, ignore_errors=True)
