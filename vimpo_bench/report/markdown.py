"""The report as a Markdown results page that reads on a code host without a browser: NAME.md, and the
folder NAME/ beside it with one PNG per figure and the CSV tables.

Built from the same panels as the HTML page (`panels.build_panels`: the same tables, notes and styles);
the figures are matplotlib drawings of those tables (`plots`). See docs/report.md for the sections.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from vimpo_bench.report import analysis as A
from vimpo_bench.report import grid as G
from vimpo_bench.report import plots
from vimpo_bench.report.endpoint import estimate, parse_endpoint, seeds_for_effect
from vimpo_bench.report.html import Panel, cell_text
from vimpo_bench.report.panels import (
    CURVE_METRICS,
    PANELS,
    PASS_AT_K_NOTE,
    REF_METRICS,
    STEPS_NOTE,
    absent_curves_note,
    build_panels,
    grid_pairs_note,
    paired_display,
    pass_at_k_display,
    steps_display,
)
from vimpo_bench.report.render import ReportFiles, failures, generated_line, run_counts, write_tables
from vimpo_bench.report.stats import interval_cells

MAX_ROWS = 60
READING_PLACEHOLDER = "<!-- reading: written by a person from the numbers above -->"


def md_text(value: object) -> str:
    """Text safe inside a Markdown table cell: one line, no column bars, no HTML."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def sentence(text: str) -> str:
    """A panel's note as a Markdown sentence: capitalized, escaped, with a full stop."""
    return md_text(text[:1].upper() + text[1:]).rstrip(".") + "."


def md_cell(value: object) -> str:
    return md_text(cell_text(value))


def md_table(df: pd.DataFrame, csv: str | None = None, max_rows: int = MAX_ROWS) -> list[str]:
    """A pipe table of `df`; a long one is cut, pointing to the CSV with every row."""
    if df.empty:
        return ["(no rows)"]
    lines = ["| " + " | ".join(md_text(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |"
              for row in df.head(max_rows).itertuples(index=False, name=None)]
    if len(df) > max_rows:
        lines += ["", f"First {max_rows} of {len(df)} rows" + (f"; all in {csv}." if csv else ".")]
    return lines


def seconds(s: float) -> str:
    """"5400 s (1.5 h)"."""
    if pd.isna(s):
        return "—"
    if s >= 3600:
        return f"{s:.0f} s ({s / 3600:.1f} h)"
    return f"{s:.0f} s ({s / 60:.1f} min)" if s >= 60 else f"{s:.1f} s"


def reporting_machine() -> dict[str, object]:
    """This machine's platform, CPU count and torch version (read from package metadata, not imported)."""
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    return {"platform": platform.platform(), "CPUs": os.cpu_count(), "torch": torch}


class Page:
    """The lines of the page, and the figures and tables it links (relative to the page's folder)."""

    def __init__(self, folder: Path, tables: list[Path]):
        self.folder = folder
        self.csv = {p.stem for p in tables}
        self.lines: list[str] = []
        self.figures: list[Path] = []
        self.pending: str | None = None

    def add(self, *lines: str) -> None:
        if self.pending is not None:  # a section's heading goes in with its first line
            self.lines.extend(["", f"## {self.pending}", ""])
            self.pending = None
        self.lines.extend(lines)

    def section(self, title: str) -> None:
        """Start a section; a section that adds nothing (a panel with nothing to show) leaves no heading."""
        self.pending = title

    def link(self, name: str) -> str:
        return quote(f"{self.folder.name}/{name}")

    def table(self, df: pd.DataFrame, csv: str | None = None) -> None:
        self.add(*md_table(df, f"{csv}.csv" if csv else None), "")

    def tables_line(self, *names: str) -> None:
        """A line linking the CSVs of these tables that were written."""
        links = [f"[{n}.csv]({self.link(n + '.csv')})" for n in names if n in self.csv]
        if links:
            self.add("Tables: " + ", ".join(links) + ".", "")

    def image(self, draw, name: str, alt: str, *args) -> None:
        """Draw a figure with `draw(*args, path)` into the folder and link it."""
        path = draw(*args, self.folder / f"{name}.png")
        self.figures.append(path)
        self.add(f"![{md_text(alt)}]({self.link(path.name)})", "")


def missing(page: Page, panel: Panel, fallback: str = "") -> bool:
    """True when a section has nothing to show: it then says the panel's error in one line if it has one,
    and is otherwise left out."""
    if panel.error:
        page.add(f"This section could not be built: {md_text(panel.error)}")
        return True
    # Nothing to show: the section is left out (its heading with it), not printed with an excuse.
    return not any(len(t) for t in panel.tables.values())


# --- sections -------------------------------------------------------------------------------------


def settings(page: Page, data, labels) -> None:
    page.section("Settings")
    if labels.empty:
        page.add("No training runs, so no settings.")
        return
    shared, per_arm = A.settings(data, labels)
    page.add(f"Config keys with one value in all {len(labels)} finished training runs:", "")
    page.table(shared)
    keys = [c for c in per_arm.columns if c not in ("arm", "condition", "runs")]
    page.add("Keys that differ between training runs, per arm" + (" and condition" if per_arm["condition"].ne("").any()
                                                                  else "")
             + f" (bookkeeping keys, which never change a result, left out: {', '.join(A.BOOKKEEPING_KEYS)}):", "")
    if keys:
        page.table(per_arm if per_arm["condition"].ne("").any() else per_arm.drop(columns="condition"))
    else:
        page.add("None.", "")


def points(value: float) -> str:
    """An accuracy difference in points: "+1.2"."""
    return "—" if pd.isna(value) else f"{100 * value:+.1f}"


def answer(page: Page, data, labels) -> None:
    """The page's opening: the question, the pre-declared primary endpoint's estimate, interval and verdict,
    one figure, the power line, the Holm-corrected secondaries and the evaluation noise."""
    declared = parse_endpoint(data.endpoint, f"study {data.title!r}: study.endpoint")
    tables = estimate(data, labels, A.run_labels(data, labels), A.final_eval_long(data, labels), declared)
    for name, df in tables.items():
        df.to_csv(page.folder / f"{name}.csv", index=False)
        page.csv.add(name)
    rows = tables["endpoints"].to_dict("records")
    first = rows[0]
    page.section("Answer")
    if declared.question:
        page.add(f"**Question.** {md_text(declared.question)}", "")
    page.add(f"**Primary endpoint** (declared in the study file before any cell ran): {md_text(first['comparison'])}, "
             f"paired by seed, two-sided paired t-test at alpha {declared.alpha:g}.", "")
    boot = (f", hierarchical bootstrap [{points(first['boot_low'])}, {points(first['boot_high'])}] (seeds, then "
            f"{first['problems']:.0f} problems, {declared.draws} draws)" if pd.notna(first["boot_low"]) else "")
    page.add(f"**Estimate: {points(first['mean_diff'])} points** over {first['n_seeds']} paired seeds, 95% t interval "
             f"[{points(first['t_low'])}, {points(first['t_high'])}]{boot}; p = {first['p']:.3g}. "
             f"**Verdict: {md_text(first['verdict'])}.**", "")
    seeds = tables["endpoint_seeds"]
    if first["n_seeds"] >= 2:
        page.image(plots.endpoint_seeds, "endpoint", "primary endpoint: paired difference per seed",
                   seeds[seeds["endpoint"] == "primary"], first)
        needed = seeds_for_effect(first["sd_diff"], 0.03, declared.alpha, declared.power)
        page.add(f"Power: the SD of the paired differences is {100 * first['sd_diff']:.1f} points over "
                 f"{first['n_seeds']} seeds, so the smallest difference this test detects with "
                 f"{declared.power:.0%} power is {100 * first['mde']:.1f} points; resolving 3 points would take "
                 f"{needed} seeds.", "")
    if len(rows) > 1:
        page.add("Secondary endpoints (Holm-corrected together; each p below is the adjusted one):", "")
        page.table(pd.DataFrame([{"endpoint": r["endpoint"], "comparison": r["comparison"], "seeds": r["n_seeds"],
                                  "difference (points)": points(r["mean_diff"]),
                                  "95% t interval": f"[{points(r['t_low'])}, {points(r['t_high'])}]",
                                  "bootstrap": (f"[{points(r['boot_low'])}, {points(r['boot_high'])}]"
                                                if pd.notna(r["boot_low"]) else "—"),
                                  "p (Holm)": f"{r['p_holm']:.3g}" if pd.notna(r["p_holm"]) else "—", "verdict": r["verdict"]}
                                 for r in rows[1:]]))
    noise = tables["eval_noise"]
    if noise["eval_noise_sd"].notna().any():
        page.add("Evaluation noise: the SD of one run's score from sampling its completions (the policy fixed) is "
                 + ", ".join(f"{100 * r.eval_noise_sd:.2f} points for {md_text(r.arm)}" for r in noise.itertuples())
                 + ", against a seed-to-seed SD of "
                 + ", ".join(f"{100 * r.seed_sd:.1f}" for r in noise.itertuples()) + " points.", "")
    page.tables_line("endpoints", "endpoint_seeds", "eval_noise")


def runs_and_machine(page: Page, data) -> None:
    page.section("Runs, time and machine")
    page.add(f"{run_counts(data.runs) or 'no'} run(s).", "")
    unfinished = data.runs[data.runs["status"] != "FINISHED"].groupby(["kind", "status"]).size()
    if len(unfinished):
        page.add("Not finished, so left out of every table and figure below but this one: "
                 + ", ".join(f"{n} {kind} {status}" for (kind, status), n in unfinished.items()) + ".", "")
    page.add(f"Finished training runs compared: {len(A.compared(data.of_kind('train')))}.", "")
    walls = A.wall_times(data.runs)
    if len(walls):
        shown = pd.DataFrame({
            "training runs of": walls["study"], "runs": walls["runs"],
            "sum of wall times": walls["wall_s_sum"].map(seconds),
            "first start → last end": walls["span_s"].map(seconds),
            "from": walls["first_start"].dt.strftime("%Y-%m-%d %H:%M UTC"),
            "to": walls["last_end"].dt.strftime("%Y-%m-%d %H:%M UTC"),
        })
        page.table(shown)
    train_ids = data.of_kind("train")["run_id"]
    records = data.tags.reindex(train_ids)
    recorded = [c for c in data.params.columns if c.startswith("machine.") and c not in records]
    if recorded:
        records = records.join(data.params.reindex(train_ids)[recorded])
    if data.manifest is None:
        page.add("Machine (from the training runs' records where they carry it, else the machine that wrote this page):", "")
        page.table(A.machine(records, reporting_machine()))
    else:
        page.add("Machine (from the training runs' records):", "")
        page.table(A.machine(records, None))


def final_eval(page: Page, panel: Panel, style) -> None:
    page.section(panel.title)
    if missing(page, panel, "no evaluation results"):
        return
    summary, paired = A.on_page(panel.tables["final_eval"]), A.on_page(panel.tables["paired_diff"])
    cells = summary.assign(cell=[c + (" †" if k.startswith("within") else "")
                                 for c, k in zip(interval_cells(summary), summary["interval"], strict=True)])
    index = ["condition", "suite", "metric"] if cells["condition"].ne("").any() else ["suite", "metric"]
    arms = A.arm_order(cells["arm"])
    wide = cells.pivot_table(index=index, columns="arm", values="cell", aggfunc="first").reset_index()
    page.add("Mean over seeds [95% t interval] n=seeds, per suite and arm. † one seed: the interval is the eval "
             f"run's own (over problems), not over seeds. Suite `{A.TRAIN_SUITE}` is the training run's own last "
             "evaluation on the validation split; the others are test sets. Shown: avg@k, maj@k and the largest "
             "k of pass@k (accuracy and pass@1 equal avg@k); every metric is in final_eval.csv.", "")
    page.table(wide[index + [a for a in arms if a in wide.columns]], "final_eval")
    page.image(plots.final_eval, "final_eval", "final evaluation: mean and 95% interval per arm", summary, arms, style)
    page.add(f"### {A.paired_title(panel.meta.get('labels'))}", "")
    if panel.meta.get("grid_key") and not paired.empty:
        page.add(sentence(grid_pairs_note(panel.meta["grid_key"])), "")
    if paired.empty:
        page.add("No paired difference: the runs need a VIMPO arm and a baseline arm evaluated on the same suite.", "")
    else:
        page.table(paired_display(paired), "paired_diff")
        page.add("Each row is its own 95% interval, with no correction for the number of rows: expect about one row "
                 "in twenty to exclude 0 by chance.", "")
    page.tables_line("final_eval", "paired_diff", "final_eval_runs")
    passes = panel.tables.get("pass_at_k")
    if passes is not None and len(passes):
        page.add("### pass@k against k", "")
        page.add(sentence(PASS_AT_K_NOTE), "")
        page.image(plots.pass_at_k, "pass_at_k", "pass@k against k, mean and 95% band over seeds per arm", passes,
                   panel.meta["pass_at_k_titles"], style)
        page.add("Mean over seeds [95% t interval] n=seeds at k = 1, 2, 4, ... and n; every k is in pass_at_k.csv.", "")
        page.table(pass_at_k_display(passes), "pass_at_k")
        page.tables_line("pass_at_k")


def wall_note(shared: int) -> str:
    return (f"Wall-clock figures are left out: {shared} training runs ran while another did, so their seconds "
            "measure a shared machine, not the algorithm.")


def learning_curves(page: Page, panel: Panel, style, shared: int) -> None:
    page.section(panel.title)
    if missing(page, panel, "no training runs, so no learning curves"):
        return
    c = panel.tables["learning_curves"]
    if int(c["n"].max()) < 2:
        page.add("One seed per arm: lines without bands (a band needs two or more seeds).", "")
    elif shared:
        page.add("Mean over seeds; band = 95% t interval at each step, against step. " + wall_note(shared), "")
    else:
        page.add("Mean over seeds; band = 95% t interval at each step. Left: against step; right: against wall time.",
                 "")
    for key, title in CURVE_METRICS:
        frame = c[c["key"] == key]
        if len(frame):  # a metric no run logged is left out, not drawn empty
            page.image(plots.curve, "curve_" + re.sub(r"[^A-Za-z0-9]+", "_", key), f"{title} ({key})", frame, title,
                       style, not shared)
    if panel.meta.get("curves_absent"):
        page.add(sentence(absent_curves_note([f"`{k}`" for k in panel.meta["curves_absent"]])), "")
    page.tables_line("learning_curves")


def steps_to_threshold(page: Page, panel: Panel, threshold: float | None, shared: int) -> None:
    page.section("Steps to reach a fixed accuracy" if shared else "Steps (and seconds) to reach a fixed accuracy")
    steps = panel.tables.get("steps_to_threshold")
    if panel.error or steps is None:
        if panel.error:
            page.add(md_text(f"This section could not be built: {panel.error}"))
        return
    how = (f"given (--threshold {threshold:g})" if threshold is not None else
           "midway between the arms' common starting value and the best arm's final value (per condition)")
    page.add(f"Threshold: {how}. For each arm, the " + STEPS_NOTE + ".", "")
    if "steps_warning" in panel.meta:
        page.add("**Note:** " + sentence(panel.meta["steps_warning"]), "")
    if shared:
        page.add(wall_note(shared), "")
    page.table(steps_display(steps, wall=not shared), "steps_to_threshold")
    page.tables_line("steps_to_threshold")


def noisy_rewards(page: Page, panel: Panel, style) -> None:
    page.section(panel.title)
    if missing(page, panel, "no noise rates"):
        return
    t, what = panel.tables["noisy_rewards"], panel.meta.get("y_label", "final accuracy")
    t = A.by_condition_and_arm(t, then=("noise_kind", "noise_rate"))
    page.image(plots.noisy, "noisy_rewards", f"{what} against the reward noise rate", t, what, style)
    shown = pd.DataFrame({"arm": t["arm"], "noise": t["noise_kind"], "noise rate": t["noise_rate"],
                          what: interval_cells(t)})
    if t["condition"].ne("").any():
        shown.insert(0, "condition", t["condition"])
    page.add(f"y: {what}; mean over seeds [95% t interval] n=seeds.", "")
    page.table(shown, "noisy_rewards")
    page.add(*(sentence(text) for kind, text in panel.notes if kind == "warn"))
    page.tables_line("noisy_rewards")


def grid(page: Page, panel: Panel, style) -> None:
    """A grid study's part of the beta-sweep section: the arms at each value, the value chosen per arm on
    validation, and the arms compared at their chosen values on the test sets."""
    key, summary, choice = panel.meta["grid_key"], panel.tables["grid"], panel.tables["grid_choice"]
    multi = summary["condition"].ne("").any()
    page.add(f"### {key}: a grid over training runs, chosen per arm on validation", "")
    page.image(plots.grid, "grid", f"validation and test against {key}, per arm", summary, choice,
               panel.meta["grid_shown"], key, style)
    page.add(sentence(panel.meta["grid_note"]), "")
    shown = choice.rename(columns={"grid": f"chosen {key}", "selection_mean": f"mean {A.TRAIN_SUITE}/{G.SELECT_METRIC}"})
    page.table(shown if multi else shown.drop(columns="condition"), "grid_choice")
    final = A.on_page(panel.tables["grid_final"])
    if len(final):
        named = {(c, a): f"{a} ({key}={g:g})" for c, a, g in choice[["condition", "arm", "grid"]].itertuples(index=False)}
        final = final.assign(cell=interval_cells(final), arm=[named[ca] for ca in zip(final["condition"], final["arm"],
                                                                                         strict=True)])
        index = ["condition", "suite", "metric"] if multi else ["suite", "metric"]
        order = [named[ca] for ca in A.by_condition_and_arm(choice)[["condition", "arm"]].itertuples(index=False)]
        wide = final.pivot_table(index=index, columns="arm", values="cell", aggfunc="first").reset_index()
        wide = wide[index + [a for a in order if a in wide.columns]]
        page.add("Each arm at its chosen value: mean over seeds [95% t interval] n=seeds.", "")
        page.table(wide, "grid_final")
    paired = panel.tables["grid_paired"]
    if len(paired):
        page.add("At the chosen values, VIMPO minus each baseline, paired by seed:", "")
        page.table(paired_display(A.on_page(paired)), "grid_paired")
    every = summary[[(s, m) in set(panel.meta["grid_shown"]) for s, m in zip(summary["suite"], summary["metric"],
                                                                             strict=True)]]
    every = every.assign(column=every["suite"] + "/" + every["metric"], cell=interval_cells(every))
    index = ["condition", "arm", "grid"] if multi else ["arm", "grid"]
    wide = A.by_condition_and_arm(every.pivot_table(index=["condition", "arm", "grid"], columns="column", values="cell",
                                                    aggfunc="first").reset_index(), then=("grid",))
    page.add(f"Every {key} tried:", "")
    page.table(wide[index + [c for c in wide.columns if c not in ("condition", "arm", "grid")]].rename(
        columns={"grid": key}), "grid")
    page.tables_line("grid", "grid_choice", "grid_final", "grid_paired")


def beta_sweep(page: Page, panel: Panel, style) -> None:
    page.section(panel.title)
    if missing(page, panel, "no beta-sweep trials in these runs"):
        return
    if "grid" in panel.tables:
        grid(page, panel, style)
    elif "grid_key" in panel.meta:
        page.add(sentence(f"the training runs vary {panel.meta['grid_key']}, but none has a final evaluation"), "")
    if "beta_sweep" not in panel.tables:
        return
    t = panel.tables["beta_sweep"]
    page.add("### Optuna trials", "")
    if t[["beta", "objective"]].notna().all(axis=1).any():
        page.image(plots.sweep, "beta_sweep", "sweep/objective against beta per trial", t)
    page.add(*(sentence(text) for _, text in panel.notes if text != panel.meta.get("grid_note")), "")
    searched = [c for c in t.columns if c not in ("run_id", "trial", "run_name", "algo", "sweep", "state", "beta",
                                                   "objective")]
    if t["sweep"].nunique() > 1:  # several Optuna studies (an arm each): the best of each, with its budget
        best = G.best_per_sweep(t)
        page.add("Best complete trial of each Optuna study (trials = the study's budget spent):", "")
        page.table(best[["sweep", "trials", "trial", "beta", *searched, "objective"]])
    page.table(t[["trial", "state", *(["sweep"] if t["sweep"].nunique() > 1 else []), "beta", *searched, "objective",
                  "run_name"]], "beta_sweep")
    page.tables_line("beta_sweep")


def moving_ref(page: Page, panel: Panel, style) -> None:
    page.section(panel.title)
    if missing(page, panel, "no pi_ref updates in these runs"):
        return
    page.image(plots.ref_windows, "ref_update_windows", "value loss, residual and KL around pi_ref updates",
               panel.tables["ref_update_windows"], REF_METRICS, style)
    page.add(*(sentence(text) for kind, text in panel.notes if kind == "info"), "")
    if len(panel.tables["ref_updates"]):
        page.table(panel.tables["ref_updates"], "ref_updates")
    page.tables_line("ref_update_windows", "ref_updates")


def diagnostics(page: Page, panel: Panel, style) -> None:
    page.section(panel.title)
    if missing(page, panel, "no diagnostics"):
        return
    adv = panel.tables.get("adv_by_position", pd.DataFrame(columns=["arm", "correct", "position", "mean_adv"]))
    vl = panel.tables.get("value_loss", pd.DataFrame(columns=["arm", "condition", "step", "mean", "ci_low", "ci_high"]))
    page.image(plots.diagnostics, "vimpo_diagnostics", "mean advantage by token position; value loss over training",
               adv, vl, style)
    page.add(*(sentence(text) for kind, text in panel.notes if kind == "missing"), "")
    page.tables_line("adv_by_position", "value_loss")


def provenance(page: Page, panel: Panel) -> None:
    page.section("Provenance summary")
    if missing(page, panel, "no provenance tags"):
        return
    page.add(*("**Warning:** " + sentence(text) for kind, text in panel.notes if kind == "warn"), "")
    page.table(panel.meta["summary"])
    page.tables_line("provenance")


# --- the page -------------------------------------------------------------------------------------


def curves_and_steps(page: Page, panel: Panel, context: dict) -> None:
    learning_curves(page, panel, context["style"], context["shared"])
    steps_to_threshold(page, panel, context["threshold"], context["shared"])


# The Markdown section of each topic of panels.PANELS that has one (by panel id); the page walks PANELS, so both
# renderers show the same topics in the same order. The overview's settings and runs come before (`settings`,
# `runs_and_machine`); the drill-down is HTML only (a browsable table of every completion).
SECTIONS = {
    "final-eval": lambda page, panel, context: final_eval(page, panel, context["style"]),
    "curves": curves_and_steps,
    "noisy": lambda page, panel, context: noisy_rewards(page, panel, context["style"]),
    "sweep": lambda page, panel, context: beta_sweep(page, panel, context["style"]),
    "moving-ref": lambda page, panel, context: moving_ref(page, panel, context["style"]),
    "diagnostics": lambda page, panel, context: diagnostics(page, panel, context["style"]),
    "provenance": lambda page, panel, context: provenance(page, panel),
}


def write_markdown(data, out: str | Path, command: str, reading: str | None = None,
                   threshold: float | None = None) -> ReportFiles:
    """Write OUT (NAME.md) and OUT-without-suffix/ (PNG figures and CSV tables). `command` regenerates the
    page; `reading` is Markdown for the closing "Reading" section (else a placeholder for a person to fill)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    panels, labels, style = build_panels(data, threshold)
    by_id = {p.id: p for p in panels}
    page = Page(out.with_suffix(""), write_tables(panels, out.with_suffix("")))
    page.add(f"# vimpo-bench results: {md_text(data.title)}", "",
             f"Selection: {md_text(data.selection)}; {run_counts(data.runs) or 'no'} run(s). {generated_line(data)}.",
             "", "Regenerate this page (figures and tables included) with:", "", "```", command, "```")
    if data.manifest is not None:
        page.add("", f"The export it reads was made from {md_text(data.manifest['source'])} with "
                 f"`vimpo-bench report {md_text(data.manifest.get('export_args', ''))}`; what each file holds: "
                 f"[export.json]({quote(os.path.relpath(data.manifest['folder'] / 'export.json', out.parent))}).")
    if data.endpoint:
        answer(page, data, labels)
    settings(page, data, labels)
    runs_and_machine(page, data)
    context = {"style": style, "shared": A.overlapping(data.runs), "threshold": threshold}
    for spec in PANELS:  # the HTML page's topics, in its order; a topic without a Markdown section is HTML only
        if spec.id in SECTIONS:
            SECTIONS[spec.id](page, by_id[spec.id], context)
    page.section("Reading")
    page.add(reading.strip() if reading and reading.strip() else READING_PLACEHOLDER)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(page.lines)).strip() + "\n"
    out.write_text(text, encoding="utf-8")
    return ReportFiles(out, sorted(page.folder / f"{n}.csv" for n in page.csv), failures(panels), page.figures)
