import json

import numpy as np
import pandas as pd
import pytest

from phenodiff.data.dataset import PhenoDataset
from phenodiff.data.schema import PhenotypeSchema
from phenodiff.synthesis import plan_synthesis, real_cell_counts


def counts_frame(rows):
    return pd.DataFrame(rows, columns=["group", "label", "real"])


def test_plan_fills_smallest_cell_first():
    counts = {("g1", "x"): 1, ("g2", "x"): 5, ("g3", "x"): 10}
    plan = plan_synthesis(counts, budget=3, target="equal_cells")
    assert plan.synthetic_counts() == {("g1", "x"): 3, ("g2", "x"): 0, ("g3", "x"): 0}


def test_plan_water_fills_to_equal_level():
    counts = {("g1", "x"): 1, ("g2", "x"): 5, ("g3", "x"): 10}
    # 4 images lift g1 to 5, then g1 and g2 take turns up to 10 (10 images), then all three rise together.
    plan = plan_synthesis(counts, budget=4 + 10 + 6, target="equal_cells")
    totals = plan.table.set_index("group")["total"].to_dict()
    assert totals == {"g1": 12, "g2": 12, "g3": 12}
    assert int(plan.table["synthetic"].sum()) == 20


def test_plan_ties_prefer_fewer_real_then_order():
    counts = {("a", "x"): 4, ("b", "x"): 3, ("c", "x"): 3}
    plan = plan_synthesis(counts, budget=2, target="equal_cells")
    # b and c tie at 3 and come first in order b, c; after b gets one, c (3) is lowest.
    assert plan.synthetic_counts() == {("a", "x"): 0, ("b", "x"): 1, ("c", "x"): 1}
    plan = plan_synthesis(counts, budget=3, target="equal_cells")
    # All at 4 now; a has the most real images, so the tie goes to b.
    assert plan.synthetic_counts() == {("a", "x"): 0, ("b", "x"): 2, ("c", "x"): 1}


def test_plan_is_deterministic():
    rng = np.random.default_rng(0)
    counts = {(f"g{i}", f"l{j}"): int(rng.integers(0, 50)) for i in range(6) for j in range(4)}
    first = plan_synthesis(counts, budget=317, target="equal_cells")
    second = plan_synthesis(dict(counts), budget=317, target="equal_cells")
    pd.testing.assert_frame_equal(first.table, second.table)


def test_plan_equal_groups_within_label():
    counts = counts_frame(
        [
            ("young", "nodule", 2),
            ("old", "nodule", 10),
            ("young", "normal", 40),
            ("old", "normal", 20),
            ("young", "rare", 0),
            ("old", "rare", 0),
        ]
    )
    plan = plan_synthesis(counts, budget=8 + 20, target="equal_groups_within_label")
    table = plan.table.set_index(["group", "label"])
    # Each label's groups are raised to the label's largest group: nodule to 10, normal to 40.
    assert table.loc[("young", "nodule"), "total"] == 10
    assert table.loc[("old", "normal"), "total"] == 40
    assert table.loc[("young", "normal"), "synthetic"] == 0
    # A label that no group has cannot be balanced and gets nothing.
    assert table.loc[("young", "rare"), "synthetic"] == 0
    assert table.loc[("old", "rare"), "synthetic"] == 0


def test_plan_within_label_keeps_label_ratio():
    counts = counts_frame([("a", "x", 10), ("b", "x", 10), ("a", "y", 20), ("b", "y", 20)])
    plan = plan_synthesis(counts, budget=60, target="equal_groups_within_label")
    table = plan.table.set_index(["group", "label"])
    assert table.loc[("a", "x"), "total"] == 20
    assert table.loc[("a", "y"), "total"] == 40


def test_plan_rejects_invalid_arguments():
    counts = {("a", "x"): 1}
    with pytest.raises(ValueError, match="equal_cells"):
        plan_synthesis(counts, budget=1, target="balanced")
    with pytest.raises(ValueError, match="budget"):
        plan_synthesis(counts, budget=-1)
    with pytest.raises(ValueError, match="non-negative"):
        plan_synthesis({("a", "x"): -2}, budget=1)
    with pytest.raises(ValueError, match="twice"):
        plan_synthesis(counts_frame([("a", "x", 1), ("a", "x", 2)]), budget=1)


def test_plan_saves_json_and_csv(tmp_path):
    counts = {("female 18-40", "nodule"): 2, ("male 40-65", "No Finding"): 9}
    schema = PhenotypeSchema.builtin("phantom")
    plan = plan_synthesis(counts, budget=5, schema=schema)
    json_path, csv_path = plan.save(tmp_path, realised={("female 18-40", "nodule"): 4})

    data = json.loads(json_path.read_text())
    cells = {(c["group"], c["label"]): c for c in data["cells"]}
    assert data["target"] == "equal_cells"
    assert data["budget"] == 5
    assert cells[("female 18-40", "nodule")]["realised"] == 4
    assert cells[("female 18-40", "nodule")]["pathology"] == ["nodule"]
    assert cells[("male 40-65", "No Finding")]["pathology"] == []
    assert cells[("female 18-40", "nodule")]["age_min"] == 18.0

    table = pd.read_csv(csv_path)
    assert list(table["synthetic"]) == [5, 0]
    assert list(table["shortfall"]) == [1, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthesis_plan.csv", "synthesis_plan.json"]


def test_plan_realised_rejects_unknown_cell():
    plan = plan_synthesis({("a", "x"): 1}, budget=1)
    with pytest.raises(ValueError, match="does not have"):
        plan.with_realised({("b", "x"): 1})


def test_real_cell_counts_multi_label():
    schema = PhenotypeSchema.builtin("phantom")
    records = pd.DataFrame(
        {
            "group": ["female 18-40", "female 18-40", "male 65-90", "unknown 18-40"],
            "pathology": [("nodule",), ("cardiomegaly", "nodule"), (), ("effusion",)],
            "split": ["train", "train", "train", "train"],
        }
    )
    counts = real_cell_counts(PhenoDataset(schema=schema, records=records))
    table = counts.set_index(["group", "label"])["real"]
    assert table[("female 18-40", "nodule")] == 2
    assert table[("female 18-40", "cardiomegaly")] == 1
    assert table[("male 65-90", "No Finding")] == 1
    assert len(counts) == len(schema.declared_groups()) * len(schema.label_names())
    assert int(counts["real"].sum()) == 4
