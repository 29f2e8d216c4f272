"""A report's data as committed files, and back: the page is rebuilt from a clone without any MLflow store.

`write_export(data, folder)` writes every frame of a `collect.ReportData` as a gzip-compressed CSV (fixed
gzip header, so the same data gives the same bytes) and `export.json` (title, selection, what each file
holds, when it was exported); `read_export(folder)` returns the same `ReportData`. A page built from the
export equals the page built from the store it came from (tests/test_report_export.py holds them
byte for byte).

What is left out, because it names the machine that ran the runs and no page reads it: the artifact
location of each run, the owner-lock tag, and the study file's absolute path (kept from `studies/` on).
After writing, every file is searched for a machine path; one found is an error, never a committed file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from vimpo_bench.report.collect import ReportData

EXPORT_VERSION = 1
MANIFEST = "export.json"
FRAMES = ("runs", "params", "tags", "final", "history", "adv", "samples")
INDEXED = ("params", "tags", "final")  # indexed by run_id
# Tags that only say where something lived on the machine that ran it.
DROPPED_TAGS = ("vimpo.owner_lock", "mlflow.source.name", "mlflow.user")
# An absolute path of a machine (a home, root, work or temporary folder; a file or sqlite URI of one).
MACHINE_PATH = re.compile(r"(?:file://|sqlite:///)?/(?:root|home|Users|work|tmp|var|private|mnt|data)/[^\s'\"]*")
DESCRIPTION = {
    "runs": "one row per run: id, name, experiment, kind (train/eval/sweep/study), algo, seed, study, status, "
            "start/end time (UTC), wall seconds, parent run id",
    "params": "the MLflow params of each run (strings, as logged), one column per key",
    "tags": "the MLflow tags of each run (machine-local ones dropped), one column per key",
    "final": "the latest value of every metric of each run, one column per key",
    "history": "per training run, metric and step: seconds since the run started and the value",
    "adv": "advantage by response position (diagnostics/adv_by_position): run, step, position, correct, mean, count",
    "samples": "every graded completion: run, source (train/eval), suite, problem id, prompt, completion, "
               "extracted answer, gold answer, correct",
}


class ExportError(ValueError):
    """An export that cannot be written or read, in one line."""


def _scrub_path(value: object) -> object:
    """A study file's absolute path from `studies/` on (or its packaged copy's); other machine paths a placeholder."""
    if not isinstance(value, str) or not MACHINE_PATH.search(value):
        return value
    for anchor in ("/vimpo_bench/studies/", "/studies/"):
        if anchor in value:
            return "studies/" + value.split(anchor, 1)[1]
    return MACHINE_PATH.sub("<local path>", value)


def scrubbed(data: ReportData) -> dict[str, pd.DataFrame]:
    """The frames to write, with run_id a column everywhere and no machine path."""
    frames = {f: getattr(data, f) for f in FRAMES}
    frames["runs"] = frames["runs"].drop(columns=["artifact_uri"], errors="ignore")
    frames["tags"] = frames["tags"].drop(columns=[c for c in DROPPED_TAGS if c in frames["tags"]])
    for name in ("params", "tags"):
        frames[name] = frames[name].map(_scrub_path)
    for name in INDEXED:
        frames[name] = frames[name].rename_axis("run_id").reset_index()
    return frames


def _csv_bytes(df: pd.DataFrame) -> bytes:
    """gzip(CSV) with mtime 0 and no file name in the header: equal data, equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(df.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ").encode("utf-8"))
    return buffer.getvalue()


def placeholder_uri(uri: str) -> str:
    """A store URI as a page may show it: a local file's folder replaced by PATH/TO (a server URL is kept)."""
    if not MACHINE_PATH.search(uri):
        return uri
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return f"sqlite:///PATH/TO/{name}" if uri.startswith("sqlite:") else f"PATH/TO/{name}"


def shown_path(path: str | Path) -> str:
    """A path as a committed page may show it: relative to the working folder when under it, else with
    its machine folders replaced by PATH/TO."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return MACHINE_PATH.sub(lambda m: "PATH/TO/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], str(path))


def write_export(data: ReportData, folder: str | Path, source: str, exported_at: str,
                 threshold: float | None = None, export_args: str = "") -> list[Path]:
    """Write `folder`/<frame>.csv.gz for every frame and `folder`/export.json; returns the paths.
    `source` says which store it came from, as a user would type it (no machine path); `exported_at` (UTC)
    becomes the page's "generated" time, so a page rebuilt later from this export is the same page;
    `export_args` the `vimpo-bench report` arguments that wrote it (shown on the page)."""
    if MACHINE_PATH.search(source):
        raise ExportError(f"the export's source {source!r} names a machine path: give it as a relative or placeholder URI")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, files = [], {}
    for name, df in scrubbed(data).items():
        blob = _csv_bytes(df)
        text = gzip.decompress(blob).decode("utf-8")
        found = MACHINE_PATH.search(text)
        if found:
            raise ExportError(f"{name}: a machine path is left ({found.group(0)[:60]}); not written")
        path = folder / f"{name}.csv.gz"
        path.write_bytes(blob)
        written.append(path)
        files[name] = {"file": path.name, "rows": len(df), "bytes": len(blob),
                       "sha256": hashlib.sha256(blob).hexdigest(), "holds": DESCRIPTION[name]}
    if MACHINE_PATH.search(export_args):
        raise ExportError(f"the export command {export_args!r} names a machine path")
    manifest = {"version": EXPORT_VERSION, "title": data.title, "selection": data.selection, "source": source,
                "exported_at": exported_at, "threshold": threshold, "export_args": export_args, "files": files,
                "endpoint": data.endpoint}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return [*written, path]


def export_folder(path: str | Path) -> Path:
    """The export folder itself, or a page's folder holding one in export/."""
    path = Path(path)
    for candidate in (path, path / "export"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ExportError(f"no export at {path}: expected {path / MANIFEST} or {path / 'export' / MANIFEST}")


def read_manifest(path: str | Path) -> dict:
    folder = export_folder(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{folder / MANIFEST} is not a readable export manifest ({exc})") from None
    if manifest.get("version") != EXPORT_VERSION:
        raise ExportError(f"{folder / MANIFEST}: export version {manifest.get('version')!r}, this suite reads {EXPORT_VERSION}")
    return manifest


def _read(folder: Path, name: str, entry: dict) -> pd.DataFrame:
    blob = (folder / entry["file"]).read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise ExportError(f"{folder / entry['file']} does not match its checksum in {MANIFEST}: the export is changed or torn")
    text = gzip.decompress(blob).decode("utf-8")
    if name in ("params", "tags"):  # strings as logged: "None" and "" stay strings, a missing key is NaN
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    elif name == "samples":  # texts stay texts ("187", not 187.0; "" not NaN)
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        df["correct"] = df["correct"].map({"True": True, "False": False}).astype(bool)
    else:
        df = pd.read_csv(io.StringIO(text), dtype={"run_id": str, "problem_id": str, "suite": str, "seed": str,
                                                   "parent_run_id": str, "run_name": str, "study": str, "algo": str})
    return df


def read_export(path: str | Path) -> tuple[ReportData, dict]:
    """The ReportData of an export (a folder written by write_export, or a page folder holding export/) and
    its manifest. Raises ExportError (one line) for a missing, changed or unreadable export."""
    folder = export_folder(path)
    manifest = read_manifest(folder)
    frames = {}
    for name in FRAMES:
        entry = manifest["files"].get(name)
        if entry is None:
            raise ExportError(f"{folder / MANIFEST} lists no {name} file")
        try:
            frames[name] = _read(folder, name, entry)
        except (OSError, EOFError, gzip.BadGzipFile, pd.errors.ParserError) as exc:
            raise ExportError(f"{folder / entry['file']} cannot be read ({exc})") from None
    runs = frames["runs"]
    for col in ("run_name", "experiment", "kind", "algo", "seed", "study", "status", "parent_run_id"):
        runs[col] = runs[col].fillna("").astype(str)
    for col in ("start_time", "end_time"):
        runs[col] = pd.to_datetime(runs[col], utc=True, format="ISO8601")
    runs["artifact_uri"] = None  # the runs' artifacts are in the export, not at a location
    for name in INDEXED:
        frames[name] = frames[name].set_index("run_id")
    frames["final"] = frames["final"].astype(float)
    adv = frames["adv"]
    if "correct" in adv and len(adv):
        adv["correct"] = adv["correct"].astype(bool)
    manifest["folder"] = folder  # where it was read (not written to the file): the page links its manifest
    data = ReportData(title=manifest["title"], selection=manifest["selection"], manifest=manifest,
                      endpoint=manifest.get("endpoint"),
                      **{f.name: frames[f.name] for f in fields(ReportData) if f.name in frames})
    return data, manifest


def export_size(folder: str | Path) -> int:
    """Bytes of an export's files."""
    return int(np.sum([p.stat().st_size for p in export_folder(folder).iterdir() if p.is_file()]))
