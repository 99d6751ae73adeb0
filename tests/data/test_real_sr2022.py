"""Integration: the third site, roboflow_sr2022 (../shared/data), builds as issue 37's unseen
site: its four YOLO classes all mark a fracture. Skipped when the data is absent (~10 s)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bonefrac.config import DataBuildConfig
from bonefrac.data.manifest import build_manifest
from bonefrac.data.schema import parse_boxes
from tests.conftest import shared_data_dir

pytestmark = pytest.mark.integration

DATA = shared_data_dir()
SR2022 = DATA / "roboflow_sr2022" if DATA is not None else None
needs_sr2022 = pytest.mark.skipif(
    SR2022 is None or not (SR2022 / "data.yaml").is_file(),
    reason="roboflow_sr2022 absent: set BONEFRAC_DATA or put it in ../shared/data",
)
#: the classes bench/unseen_site.yaml passes to 'bonefrac data build --fracture-classes'
FRACTURE_CLASSES = ["angle", "fracture", "line", "messed_up_angle"]


@needs_sr2022
def test_roboflow_sr2022_builds_with_980_fractured_and_43_not(tmp_path: Path) -> None:
    assert SR2022 is not None
    build_manifest(
        DataBuildConfig(
            out=tmp_path,
            sources={"yolo": [SR2022]},
            fracture_classes=FRACTURE_CLASSES,
            progress=False,
        )
    )
    df = pd.read_csv(tmp_path / "manifest.csv", keep_default_na=False)
    quarantined = pd.read_csv(tmp_path / "quarantine.csv", keep_default_na=False)
    assert len(quarantined) == 0, quarantined.head()
    assert len(df) == 1023
    assert (df["label"] == 1).sum() == 980 and (df["label"] == 0).sum() == 43
    boxed = df["boxes"].map(lambda v: len(parse_boxes(v)) > 0)
    assert (boxed == (df["label"] == 1)).all()  # every fractured image has its boxes
    # the 3 Roboflow augmentations of one source stem share a group, so a split never cuts one
    assert df["group"].nunique() <= 397
