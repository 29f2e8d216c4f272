"""Committed exports (vimpo_bench/report/export.py): a page rebuilt from its export is the page built from the
store; `make reports` leaves the committed pages byte-identical; nothing under reports/ names a machine path."""

from __future__ import annotations

import filecmp
import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vimpo_bench.report import build_report, collect
from vimpo_bench.report.export import MACHINE_PATH, ExportError, read_export, write_export
from vimpo_bench.report.synthetic import fresh_store, log_synthetic_study

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
COMMITTED = sorted(p.parent.parent for p in REPORTS.glob("*/export/export.json"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = fresh_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # new experiments keep their artifacts under ./mlartifacts
        log_synthetic_study(uri, study="exp", noise_ps=(0.0,), steps=12, with_sweep=False, evil_text=True)
    return uri


def _lines_without_header(page: Path) -> list[str]:
    """The page's lines past the "Regenerate" block (which names the store or the export), without the Machine
    table (the store's page falls back to this machine for what the runs did not record; the export's never
    does: it says "not recorded")."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Settings"))
    machine = next(i for i, line in enumerate(lines) if line.startswith("Machine ("))
    after = next(i for i in range(machine, len(lines)) if lines[i].startswith("## "))
    return lines[start:machine] + lines[after:]


def test_a_page_from_its_export_equals_the_page_from_the_store(store, tmp_path):
    direct = build_report(study="exp", tracking_uri=store, format="markdown", out=tmp_path / "direct" / "exp.md")
    exported = build_report(study="exp", tracking_uri=store, format="markdown", out=tmp_path / "via" / "exp.md",
                            export_to=tmp_path / "via" / "exp" / "export")
    assert _lines_without_header(direct.page) == _lines_without_header(exported.page)
    for table in direct.tables + direct.figures:
        twin = exported.page.with_suffix("") / table.name
        assert filecmp.cmp(table, twin, shallow=False), f"{table.name} differs between store and export"
    # and again from the export alone, into another folder: the same bytes
    again = build_report(from_export=tmp_path / "via" / "exp", format="markdown", out=tmp_path / "again" / "exp.md")
    assert _lines_without_header(again.page) == _lines_without_header(exported.page)


def test_the_export_keeps_no_machine_path_and_is_byte_stable(store, tmp_path):
    data = collect(study="exp", tracking_uri=store)
    # a run's tags name this machine's folders (the owner lock, the study file): the export must not
    data.tags.loc[data.tags.index[0], "vimpo.study_file"] = "/root/somewhere/vimpo_bench/studies/exp.yaml"
    data.tags.loc[data.tags.index[0], "vimpo.owner_lock"] = "host:/home/me/runs/x/.owners/y"
    first = write_export(data, tmp_path / "a", "an MLflow store (sqlite:///mlflow.db)", "2026-01-01 00:00 UTC")
    second = write_export(data, tmp_path / "b", "an MLflow store (sqlite:///mlflow.db)", "2026-01-01 00:00 UTC")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} is not byte-stable"
        text = gzip.decompress(a.read_bytes()).decode() if a.suffix == ".gz" else a.read_text()
        assert not MACHINE_PATH.search(text), a.name
    back, manifest = read_export(tmp_path / "a")
    assert back.tags.loc[data.tags.index[0], "vimpo.study_file"] == "studies/exp.yaml"
    assert "vimpo.owner_lock" not in back.tags
    assert manifest["files"]["samples"]["rows"] == len(data.samples) > 0


def test_an_export_that_names_its_store_by_machine_path_is_refused(store, tmp_path):
    data = collect(study="exp", tracking_uri=store)
    with pytest.raises(ExportError, match="machine path"):
        write_export(data, tmp_path / "x", "sqlite:////root/store/mlflow.db", "2026-01-01 00:00 UTC")


def test_a_changed_export_file_is_refused_in_one_line(store, tmp_path):
    build_report(study="exp", tracking_uri=store, format="markdown", out=tmp_path / "exp.md",
                 export_to=tmp_path / "exp" / "export")
    history = tmp_path / "exp" / "export" / "history.csv.gz"
    history.write_bytes(history.read_bytes()[:-40])  # torn
    result = subprocess.run([sys.executable, "-m", "vimpo_bench", "report", "--from-export", str(tmp_path / "exp"),
                             "--format", "markdown"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "does not match its checksum" in result.stderr and "Traceback" not in result.stderr


def test_from_export_takes_no_store_selection(tmp_path):
    with pytest.raises(ValueError, match="--from-export reads a committed export"):
        build_report(study="x", from_export=tmp_path)


@pytest.mark.parametrize("page", COMMITTED, ids=[p.name for p in COMMITTED])
def test_make_reports_leaves_each_committed_page_byte_identical(page, tmp_path):
    """What `make reports` runs for one page, in a copy of reports/: every file it writes equals the committed one."""
    copy = tmp_path / "reports"
    shutil.copytree(page, copy / page.name)
    reading = REPORTS / f"{page.name}.reading.md"
    args = ["--from-export", f"reports/{page.name}/export", "--format", "markdown", "--out", f"reports/{page.name}.md"]
    if reading.is_file():
        shutil.copy(reading, copy / reading.name)
        args += ["--reading", f"reports/{reading.name}"]
    result = subprocess.run([sys.executable, "-m", "vimpo_bench", "report", *args], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (copy / f"{page.name}.md").read_bytes() == (REPORTS / f"{page.name}.md").read_bytes()
    for rebuilt in (copy / page.name).iterdir():
        if rebuilt.is_file():
            assert rebuilt.read_bytes() == (page / rebuilt.name).read_bytes(), f"{rebuilt.name} differs"


def test_no_machine_path_anywhere_under_reports():
    found = []
    for path in REPORTS.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".csv", ".json", ".html"):
            hit = MACHINE_PATH.search(path.read_text(encoding="utf-8", errors="replace"))
            if hit:
                found.append(f"{path.relative_to(ROOT)}: {hit.group(0)[:60]}")
    assert not found, found


def test_every_page_has_an_export_or_is_archived():
    pages = {p.stem for p in REPORTS.glob("*.md")} - {"README"}
    pages = {re.sub(r"\.reading$", "", p) for p in pages}
    assert pages == {p.name for p in COMMITTED}
