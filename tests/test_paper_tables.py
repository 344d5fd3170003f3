"""Tables a paper can print as they are: LaTeX that compiles with its legend, digits that follow the quantity
(the same in every human format), published rows with their caveats, a cost column re-measured with no worker
training, and a default view that fits 160 columns. On hand-made cell files (tests/board_helpers.py), except the
last test, which runs `bench run` on a tiny dataset."""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from board_helpers import write_store
from aprbench.harness.cli.main import main
from aprbench.harness.results import leaderboard as lb
from aprbench.harness.results import comparisons, tables
from aprbench.harness.store.costs import write_costs

SNAPSHOT = Path(__file__).parent / "snapshots" / "leaderboard.tex"
TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"


def fake_deltas(cells, iterations=None, **options):
    """Statistics standing in for harness.results.comparisons: negative deltas at the seed level, position
    significant after Holm's adjustment, orientation not."""
    rows = []
    for scene, dm, dd in (("room_1", -0.0123, -0.46), ("site&2", -0.317, 0.052)):
        rows.append({"dataset": "synthetic", "scene": scene, "method": "posenet+pae", "fraction": 1.0,
                     "teacher_scenes": "room_1+site&2", "baseline": "posenet", "ci_basis": "seeds", "confidence": 0.95,
                     "delta_position_m": dm, "delta_position_ci_low": dm * 1.8, "delta_position_ci_high": dm * 0.2,
                     "delta_position_p": 0.001, "delta_position_p_adj": 0.004, "delta_orientation_deg": dd,
                     "delta_orientation_ci_low": -abs(dd) * 2, "delta_orientation_ci_high": abs(dd) * 2,
                     "delta_orientation_p": 0.3, "delta_orientation_p_adj": 0.6})
    return pd.DataFrame(rows)


@pytest.fixture
def paper_board(tmp_path, monkeypatch):
    """Two scenes whose names need escaping, a method name with ``_`` and ``%``, negative deltas."""
    monkeypatch.setattr(comparisons, "stats_table", fake_deltas)
    store = write_store(tmp_path / "wd", scenes=("room_1", "site&2"), second_recipe=False, decoder=False)
    board = lb.build(store)
    board.poses["method"] = board.poses["method"].str.replace("pae-rpr", "pae_rpr 100%", regex=False)
    return board


def latex_structure_errors(text: str) -> list[str]:
    """What keeps ``text`` (the body of a document) from compiling, found without a LaTeX engine."""
    errors = []
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("%"))
    begins, ends = re.findall(r"\\begin\{(\w+)\}", body), re.findall(r"\\end\{(\w+)\}", body)
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(name)
        elif not stack or stack.pop() != name:
            errors.append(f"\\end{{{name}}} does not close the open environment")
    if stack or len(begins) != len(ends):
        errors.append(f"unclosed environments: {stack}")
    plain = re.sub(r"\\[{}&%_$#]", "", body)
    if plain.count("{") != plain.count("}"):
        errors.append("unbalanced braces")
    if plain.count("$") % 2:
        errors.append("unbalanced $")
    for char in "_%#":
        if char in plain:
            errors.append(f"raw {char!r} outside its use")
    for tabular in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", body, flags=re.S):
        columns = len(tabular[0])
        for row in tabular[1].split("\\\\")[:-1]:
            row = re.sub(r"\\(toprule|midrule|bottomrule)", "", row)
            if re.sub(r"\\&", "", row).count("&") != columns - 1:
                errors.append(f"a row of {columns} columns has another number of cells: {row.strip()[:60]}")
    if re.search(r"[<>]", re.sub(r"\$[^$]*\$", "", plain)):
        errors.append("< or > in text mode (pdflatex prints other glyphs)")
    if re.search(r"--\d", body) or "−" in body:
        errors.append("a minus sign that is not $-$")
    if any(ord(c) > 127 for c in body):
        errors.append("a character outside ASCII that pdflatex may not typeset")
    return errors


def compile_latex(text: str, folder: Path) -> str | None:
    """Compile ``text`` in a minimal article with booktabs, if a LaTeX engine is installed: its log on failure,
    "" on success, None without an engine."""
    document = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + text + "\n\\end{document}\n"
    (folder / "table.tex").write_text(document)
    for engine, args in (("pdflatex", ["-interaction=nonstopmode", "-halt-on-error"]), ("tectonic", [])):
        if shutil.which(engine):
            done = subprocess.run([engine, *args, "table.tex"], cwd=folder, capture_output=True, text=True,
                                  timeout=120)
            return "" if done.returncode == 0 and (folder / "table.pdf").is_file() else done.stdout[-3000:]
    return None


def test_latex_is_a_complete_table_with_its_legend_minus_signs_and_escapes(paper_board, tmp_path):
    out = lb.text(paper_board, fmt="latex", decoders=False)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(out + "\n")
    assert out + "\n" == SNAPSHOT.read_text(), "LaTeX changed; if on purpose, rerun with UPDATE_SNAPSHOTS=1"
    assert "% needs \\usepackage{booktabs}" in out and out.count("\\begin{table}") == 2  # scenes table and Δ table
    assert "room\\_1 (m, $^\\circ$)" in out and "site\\&2 (m, $^\\circ$)" in out
    assert "posenet+pae+pae\\_rpr 100\\%@3" in out
    delta_rows = [line for line in out.splitlines() if line.startswith("posenet+pae &")]
    assert delta_rows and "$-$0.01*, $-$0.46" in delta_rows[-1] and "$-$0.32*, +0.05" in delta_rows[-1]
    scenes, delta = [line for line in out.splitlines() if line.startswith("\\caption{synthetic:")]
    assert "digits: positions to 0.01 m" in scenes and "ms/frame: wall-clock per frame" in scenes
    assert "$\\Delta$: candidate $-$ baseline of the median error" in delta and "Holm" in delta
    assert latex_structure_errors(out) == []
    log = compile_latex(out, tmp_path)
    assert log in ("", None), log


def test_structural_check_finds_what_would_not_compile():
    good = tables.to_latex(pd.DataFrame({"a": ["x"], "b": ["$-$1"]}), "caption 5 %", ["note_1"])
    assert latex_structure_errors(good) == []
    for bad in (good.replace("\\end{table}", ""), good.replace("$-$1", "--1"), good.replace("\\%", "%"),
                good.replace("x &", "x & y &"), good.replace("note\\_1", "note_1"), good.replace("5 ", "p < 5 ")):
        assert latex_structure_errors(bad), bad


def test_digits_follow_the_quantity():
    # positions: 0.01 m below 10 m, 0.1 m to 100 m; orientations 0.1°, 0.01° below 1°; true minus; no "−0.00"
    cases = {tables.fmt_m: [(0.0903, "0.09"), (0.301, "0.30"), (2.214, "2.21"), (31.44, "31.4"), (142.6, "143"),
                            (-0.0123, "−0.01"), (-0.004, "0.00")],
             tables.fmt_deg: [(12.19, "12.2"), (6.36, "6.4"), (0.84, "0.84"), (0.996, "1.0"), (-4.66, "−4.7")]}
    for f, pairs in cases.items():
        for value, want in pairs:
            assert f(value) == want, (f.__name__, value)
    assert tables.with_spread(8.52, 0.654, tables.fmt_deg) == "8.5±0.7"  # the spread at its value's resolution
    assert tables.with_spread(0.0903, 0.0114, tables.fmt_m) == "0.09±0.01"
    assert tables._signed(-0.0123, tables.fmt_m) == "−0.01" and tables._signed(0.001, tables.fmt_m) == "±0.00"


def _table_cells(line: str, fmt: str) -> list[str] | None:
    """The cells of one table row in ``fmt`` (None for a line that is not a row)."""
    if fmt == "latex" and " & " in line and line.endswith("\\\\"):
        return [c.strip() for c in line[:-2].split(" & ")]
    if fmt == "github" and line.startswith("| ") and not line.startswith("|--"):
        return [c.strip() for c in line.strip("|").split(" | ")]
    if fmt == "html" and "<td>" in line:
        return [html.unescape(c.strip()) for c in re.findall(r"<td>(.*?)</td>", line)]
    if fmt == "plain":
        return re.split(r"\s{2,}", line.strip())
    return None


def _rows(text: str, fmt: str) -> dict[str, list[str]]:
    """Method name -> its cells, from a table in ``fmt`` (first table of each method name kept)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = _table_cells(line, fmt)
        if cells is None or (fmt == "plain" and not line.startswith("posenet")):
            continue
        rows.setdefault(re.sub(r"\\_|_", "_", cells[0]).replace("\\%", "%"), cells[1:])
    return rows


def _numbers(cells: list[str]) -> list[str]:
    text = " ".join(cells).replace("$-$", "-").replace("−", "-").replace("$\\pm$", "±")
    return re.findall(r"[-+±]?\d+(?:\.\d+)?", text)


def test_the_same_numbers_in_every_human_format(tmp_path, monkeypatch):
    monkeypatch.setattr(comparisons, "stats_table", fake_deltas)
    store = write_store(tmp_path / "wd", seeds=(0, 1, 2), scenes=("room_1", "site&2"), second_recipe=False,
                        decoder=False)
    board = lb.build(store)
    texts = {fmt: lb.text(board, fmt=fmt, decoders=False) for fmt in ("github", "plain", "html", "latex")}
    rows = {fmt: _rows(text, fmt) for fmt, text in texts.items()}
    teacher = [r for r in rows["github"] if r == "posenet"][0]
    for method in ("posenet", "posenet+pae", "posenet+pae+pae-rpr@3"):
        numbers = {fmt: _numbers(r[method]) for fmt, r in rows.items()}
        assert len(set(map(tuple, numbers.values()))) == 1, numbers
    # the teacher's room cell, from an independent rounding of the stored medians (mean ± sample std over seeds)
    tidy = lb.scenes_frame(board)
    room = tidy[(tidy["method"] == teacher) & (tidy["scene"] == "room_1")].iloc[0]
    want = f"{room['median_m']:.2f}±{room['median_m_std']:.2f}, {room['median_deg']:.1f}±{room['median_deg_std']:.1f}"
    assert rows["github"][teacher][0].replace("*", "") == want.replace("-", "−")
    assert "(n=" not in texts["github"] and "over 3 training seeds" in texts["github"]


def _stats_rows(text: str, fmt: str) -> dict[tuple[str, str, str], list[str]]:
    """(comparison, method, scene) -> the cells of the stats view's row, from a table in ``fmt``."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for line in text.splitlines():
        cells = _table_cells(line, fmt)
        if cells is None:
            continue
        key = tuple(c.replace("\\", "") for c in cells[:3])
        if key[0] in ("vs teacher", "iteration"):
            rows[key] = cells[3:]
    return rows


def test_the_same_numbers_in_every_human_format_in_the_stats_view(tmp_path):
    store = write_store(tmp_path / "wd", seeds=(0, 1, 2), scenes=("room_1", "site&2"), second_recipe=False,
                        decoder=False)
    board = lb.build(store)
    texts = {fmt: lb.text(board, view="stats", fmt=fmt, decoders=False, header=False)
             for fmt in ("github", "plain", "html", "latex")}
    rows = {fmt: _stats_rows(text, fmt) for fmt, text in texts.items()}
    assert len(rows["github"]) == 10 and all(set(r) == set(rows["github"]) for r in rows.values())
    for key in rows["github"]:
        numbers = {fmt: _numbers(r[key]) for fmt, r in rows.items()}
        assert len(set(map(tuple, numbers.values()))) == 1, (key, numbers)
    # the digits rule, against an independent rounding of the machine frame (csv keeps every digit)
    frame = pd.read_csv(io.StringIO(lb.text(board, view="stats", fmt="csv")))
    row = frame[(frame["method"] == "posenet+pae+pae-rpr@3") & (frame["scene"] == "site&2")
                & frame["comparison"].isna()].iloc[0]
    header = [c.strip() for c in texts["github"].splitlines()[2].strip("|").split(" | ")]
    got = dict(zip(header[3:], rows["github"][("vs teacher", "posenet+pae+pae-rpr@3", "site&2")]))
    minus = lambda t: t.replace("-", "−")  # noqa: E731
    assert got["median_m (m)"] == f"{row['median_m_mean']:.2f} ± {row['median_m_std']:.2f}"
    assert got["Δ position (m) [95 % CI]"] == minus(
        f"{row['delta_position_m']:+.2f} [{row['delta_position_ci_low']:+.2f}, {row['delta_position_ci_high']:+.2f}]*")
    assert got["Δ orientation (°) [95 % CI]"].rstrip("*") == minus(
        f"{row['delta_orientation_deg']:+.1f} [{row['delta_orientation_ci_low']:+.1f}, "
        f"{row['delta_orientation_ci_high']:+.1f}]")
    assert got["p / p_adj (m)"] == minus(f"{row['delta_position_p']:.2g} / {row['delta_position_p_adj']:.2g}")
    assert len(repr(float(row["delta_position_m"]))) > 8  # csv: exact, not rounded
    assert "-" not in got["per-seed Δ (m)"] and "digits: positions to 0.01 m" in texts["github"]


def test_default_view_of_two_scenes_fits_160_columns(tmp_path):
    store = write_store(tmp_path / "wd", seeds=(0, 1, 2))  # two recipes, three seeds, decoder
    board = lb.build(store)
    for col in ("method", "teacher"):  # names as long as the built-in ones
        board.poses[col] = board.poses[col].str.replace("posenet", "posenet-mobilenet", regex=False)
    for fmt in ("github", "plain"):
        out = lb.text(board, fmt=fmt)
        assert "room" in out and "site" in out and "Average" in out
        widest = max(out.splitlines(), key=len)
        assert len(widest) <= 160, (fmt, len(widest), widest)


def test_published_rows_carry_caveat_marks_and_footnotes(tmp_path, capsys):
    store = write_store(tmp_path / "wd", dataset="sevenscenes", scenes=("chess", "heads"), decoder=False,
                        second_recipe=False)
    assert main(["leaderboard", "--workdir", str(store.root), "--published", "--format", "plain"]) == 0
    out = capsys.readouterr().out
    published = out[out.index("published results"):]
    hloc = [line for line in published.splitlines() if line.startswith("hloc SuperPoint+SuperGlue (sfm)")][0]
    assert "[published]§" in hloc and "0.02, 0.84" in hloc  # sub-degree figures keep two decimals
    footnotes = " ".join(published.split())  # unwrapped
    assert "§ evaluated against SfM (COLMAP) pseudo ground truth of 7Scenes" in footnotes
    # ViewFormer quotes MS-Transformer on chess at 4.66°, GSplatLoc at 6.38°: both rows marked, both figures named
    for quoted in ("ViewFormer", "GSplatLoc"):
        row = [line for line in published.splitlines() if line.startswith(f"MS-Transformer (as quoted by {quoted})")]
        assert row and re.search(r"0\.11, \d\.\d‡", row[0])
    assert re.search(r"‡ sources disagree .*MS-Transformer on chess: 0\.11 m, 4\.7° \[\d\] vs 0\.11 m, 6\.4° \[\d\]",
                     footnotes)
    ours = [line for line in out[:out.index("published results")].splitlines() if line.startswith("posenet")]
    assert ours and not any("§" in line or "‡" in line for line in ours)  # our rows carry no published caveat
    assert main(["leaderboard", "--workdir", str(store.root), "--published", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert "\\S{}" in latex and "\\textdaggerdbl{}" in latex and latex_structure_errors(latex) == []


def test_published_on_synthetic_scenes_says_how_to_get_real_ones(tmp_path, capsys):
    store = write_store(tmp_path / "wd", scenes=("chess", "heads"), decoder=False, second_recipe=False)
    assert main(["leaderboard", "--workdir", str(store.root), "--published"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no published results for synthetic's scenes (chess, heads)" in out  # synthetic, whatever the names
    assert "7Scenes (chess, fire, heads, office, pumpkin, redkitchen, stairs)" in out
    assert "--dataset sevenscenes:root=DIR" in out and "--dataset cambridge:root=DIR" in out
    assert main(["leaderboard", "--workdir", str(store.root), "--published", "--format", "csv"]) == 0
    got = capsys.readouterr()
    assert not pd.read_csv(io.StringIO(got.out))["published"].any()
    assert "--dataset sevenscenes:root=DIR" in got.err


def test_cost_column_uses_the_quiet_remeasurement_with_its_spread(tmp_path):
    store = write_store(tmp_path / "wd", second_recipe=False, decoder=False)
    write_costs(store, "teacher-s0", {0: [1.4, 1.1, 1.9]})
    [(_, table)] = lb.scenes_table(lb.build(store), "plain")
    ms = dict(zip(table["method"], table["ms/frame"]))
    assert ms["posenet"] == "1.4±0.4"  # median of the repeats ± half their range
    assert ms["posenet+pae"] == "≈3.0"  # measured during its run only
    legend = " ".join(table.attrs["legend"])
    assert "median of the repeats ± half their range" in legend and "≈: measured during the run" in legend
    frame = lb.machine_frame(lb.build(store), "cells")
    teacher = frame[frame["cell"] == "teacher-s0"].iloc[0]
    assert teacher["ms_quiet"] and teacher["ms_per_frame"] == pytest.approx(1.4)
    assert teacher["ms_per_frame_min"] == pytest.approx(1.1) and teacher["ms_per_frame_max"] == pytest.approx(1.9)
    cell = store.cell_path("teacher-s0")  # the cell computed again after its cost was measured: measured again
    later = store.cost_path("teacher-s0").stat().st_mtime_ns + 10**9
    os.utime(cell, ns=(later, later))
    [(_, table)] = lb.scenes_table(lb.build(store), "plain")
    assert dict(zip(table["method"], table["ms/frame"]))["posenet"] == "≈2.0"


def test_no_remeasurement_while_another_process_trains(tmp_path):
    from aprbench.harness.running.costs import remeasure, training_elsewhere

    store = write_store(tmp_path / "wd", second_recipe=False, decoder=False)
    lock = store.root / "locks" / "teacher-posenet-abc.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"l = FileLock({str(lock)!r}); l.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert training_elsewhere(store) == ["teacher-posenet-abc"]

        class Cell:
            decoder = None

        said = []
        runner = type("Runner", (), {"store": store})()
        assert remeasure(runner, [Cell()], ["teacher-s0"], say=said.append) == 0
        assert "another process is training teacher-posenet-abc" in said[0]
        assert not store.cost_path("teacher-s0").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert training_elsewhere(store) == []


def test_bench_run_remeasures_costs_after_its_cells(tmp_path, capsys):
    wd = tmp_path / "wd"
    args = ["run", "--workdir", str(wd), "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet",
            "--student", "none", "pae", "--refiner", "none", "pae-rpr", "--iterations", "0,2", "--set", "epochs=1",
            "--no-progress", "--no-report"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "re-measuring ms/frame of 3 cell(s), no worker training (3 repeats each)" in out.err
    costs = sorted((wd / "cells").glob("*.cost.json"))
    assert len(costs) == 3
    from aprbench.harness.store.costs import read_costs
    from aprbench.harness.store.hdf5 import Store

    store = Store(wd, create=False)
    samples = {p.name.split(".")[0]: read_costs(store, p.name.split(".")[0]) for p in costs}
    assert all(len(v) == 3 and min(v) > 0 for s in samples.values() for v in s.values())
    refiner = [s for s in samples.values() if len(s) == 3][0]  # iterations 0, 1, 2: teacher + k steps
    steps = np.subtract(refiner[2], refiner[1])
    assert np.allclose(np.subtract(refiner[1], refiner[0]), steps) and (steps > 0).all()
    table = out.out[out.out.index("| method"):]
    assert "≈" not in table.split("\n\n")[0] and "±" in table.split("\n\n")[0]


def test_every_view_in_latex_compiles(tmp_path):
    """scenes with Δ and published tables, stats (escaped like the others), cells, recall: one document."""
    store = write_store(tmp_path / "wd", dataset="sevenscenes", scenes=("chess", "heads"), seeds=(0, 1))
    board = lb.build(store)
    parts = [lb.text(board, fmt="latex", published=True)]
    parts += [lb.text(board, view=v, fmt="latex", header=False, decoders=False) for v in ("stats", "cells", "recall")]
    out = "\n\n".join(parts)
    assert out.count("\\begin{table}") == 7  # scenes, Δ, published, stats, cells, recall, decoders
    assert "median\\_m (m)" in out  # the stats view's headers escaped
    assert latex_structure_errors(out) == []
    log = compile_latex(out, tmp_path)
    assert log in ("", None), log
