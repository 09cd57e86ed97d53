"""The figures' SVG pictures: well-formed XML, byte-identical across two processes, with <title>
and <desc> (the figures in words) for assistive technology; `write_charts` refuses symbolic links."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest

from ncpi_workflow.charts import NAMES, all_charts, write_charts
from ncpi_workflow.metrics import compute_metrics
from tests.conftest import ROOT
from tests.test_metrics_support import document, inspection, rec

SVG = "{http://www.w3.org/2000/svg}"
P = date(2017, 1, 26)
TODAY = date(2018, 6, 30)


def sample():
    recs = [rec("CUM", P, n, closed_on=P + timedelta(days=30 * n), outcome="achieved" if n % 2 else "withdrawn") for n in range(1, 5)]
    recs += [rec("KEN", P, 1, overdue_days=40), rec("KEN", P, 2, overdue_days=200), rec("KEN", P, 3, closed_on=P + timedelta(days=90),
                                                                                       outcome="achieved")]
    inspections = [inspection("CUM", P, plan_due=date(2017, 3, 9)), inspection("KEN", P, pcc_due=date(2018, 6, 1))]
    return compute_metrics(document(TODAY, recs, inspections))


SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from ncpi_workflow.charts import write_charts
from tests.test_metrics_charts import sample
write_charts(sample(), Path(sys.argv[1]))
"""


def test_svg_is_well_formed_accessible_and_deterministic_across_processes(tmp_path):
    folders = [tmp_path / "one", tmp_path / "two"]
    for folder in folders:
        subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT)), str(folder)], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONHASHSEED": "random"}, timeout=60)
    for name in NAMES:
        one, two = ((f / f"{name}.svg").read_bytes() for f in folders)
        assert one == two, f"{name}.svg differs between two runs"
        root = ET.fromstring(one)
        assert root.tag == f"{SVG}svg"
        assert root.get("role") == "img" and root.get("aria-labelledby") == f"{name}-title {name}-desc"
        title, desc = root[0], root[1]
        assert title.tag == f"{SVG}title" and title.get("id") == f"{name}-title" and title.text
        assert desc.tag == f"{SVG}desc" and desc.get("id") == f"{name}-desc" and desc.text
        text = one.decode()
        assert "<metadata" not in text and "Matplotlib v" not in text and "2026-" not in text
        assert "<text" in text  # svg.fonttype none: the words stay text, not glyph outlines
    charts = {c.name: c for c in all_charts(sample())}
    assert charts["ageing"].desc == (
        "Overdue items by days overdue. 0-30 days: 1 (1 PCC response); 31-90 days: 1 (1 recommendation); "
        "91-180 days: 0; >180 days: 2 (1 recommendation, 1 action plan).")  # KEN's PCC response is 29 days late
    assert "Cumbria Constabulary 50% (2 of 4)" in charts["implementation"].desc
    assert "Kent Police 100% (1 of 1)" in charts["implementation"].desc
    assert "National median 90, 90th percentile 108 (5 closed); Cumbria Constabulary median 75, 90th percentile 111" in charts["closure"].desc


def test_no_data_pictures():
    for chart in all_charts(compute_metrics(document(TODAY))):
        ET.fromstring(chart.svg)
        assert ">No data<" in chart.svg or "No data" in chart.svg
    charts = {c.name: c for c in all_charts(compute_metrics(document(TODAY)))}
    assert charts["ageing"].desc == "No overdue items."
    assert charts["implementation"].desc == "Implementation rate (achieved of closed recommendations): National no data."


def test_write_charts_refuses_symbolic_links_and_files(tmp_path):
    m = compute_metrics(document(TODAY))
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="is a symbolic link"):
        write_charts(m, link)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        write_charts(m, afile)
    out = tmp_path / "out"
    out.mkdir()
    (out / "ageing.svg").symlink_to(target / "victim.svg")
    with pytest.raises(ValueError, match="cannot write"):
        write_charts(m, out)
    assert not (target / "victim.svg").exists()
    written = write_charts(m, tmp_path / "new" / "dir")
    assert [p.name for p in written] == [f"{n}.svg" for n in NAMES]
