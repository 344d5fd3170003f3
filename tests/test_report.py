"""The report on a store of hand-written cell files: references, captions, stale figures, decoder grids."""

from __future__ import annotations

import re

import numpy as np
import pytest

from board_helpers import write_grid_png, write_store
from aprbench.harness.results.report import colours, grid_pairs, write_report
from aprbench.harness.store.manifest import record


def referenced(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_report_references_only_existing_files_and_captions_every_figure(tmp_path):
    store = write_store(tmp_path / "wd", seeds=(0, 1))
    out = tmp_path / "report"
    out.mkdir()
    (out / "cdf-old-scene.png").write_bytes(b"stale")  # from an earlier report, which recorded it
    record(out, "report", ["cdf-old-scene.png"])
    index = write_report(store, out)
    html = index.read_text()
    refs = referenced(html)
    assert refs and all((out / r).is_file() for r in refs)
    assert not (out / "cdf-old-scene.png").exists()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(refs)
    assert html.count("<figcaption>") == len(refs)
    # one iterations figure per scene, one CDF per scene, bars per dataset, one decoder grid
    names = {p.name for p in out.glob("*.png")}
    assert {"iterations-synthetic-room.png", "iterations-synthetic-site.png", "cdf-synthetic-room.png",
            "cdf-synthetic-site.png", "scenes-synthetic.png"} <= names
    assert len([n for n in names if n.startswith("decoder-")]) == 1
    # provenance first, then the scenes table
    assert html.index("Provenance") < html.index("Median errors per scene") < html.index("Figures")
    assert "teacher.epochs=2" in html and "± one standard deviation over seeds" in html
    md = (out / "report.md").read_text()
    assert all(f"]({r})" in md for r in refs)
    # unchanged cells: not rewritten; --filter narrows it and drops the figures it no longer has
    mtime = index.stat().st_mtime_ns
    assert write_report(store, out).stat().st_mtime_ns == mtime
    write_report(store, out, filters=["refiner=-", "student=-"])
    refs = referenced(index.read_text())
    assert all((out / r).is_file() for r in refs) and not any(r.startswith("iterations-") for r in refs)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(refs)


def test_decoder_grid_pairs_are_read_back_from_the_png(tmp_path):
    path = tmp_path / "grid.png"
    write_grid_png(path, n=6, size=16)
    pairs = grid_pairs(path)
    assert len(pairs) == 6  # the two empty slots of the second row are padding
    truth, decoded = pairs[2]
    assert truth.shape == decoded.shape == (16, 16, 3)
    want = np.linspace(0, 1, 16) * 0.5  # the third truth tile: gradient times 0.3 + 0.1 * 2
    assert np.allclose(truth[0, :, 0], want, atol=1 / 255)
    assert not np.allclose(decoded, truth, atol=2 / 255)


@pytest.mark.parametrize("n", [3, 12, 27])
def test_colours_never_repeat_within_a_plot(n):
    got = [tuple(np.round(c, 4)) for c in colours(n)]
    assert len(set(got)) == n


def test_report_cli_covers_the_store(tmp_path, run_bench):
    store = write_store(tmp_path / "wd", decoder=False)
    out = run_bench("report", "--workdir", store.root, "--filter", "overrides=", "--out", tmp_path / "r")
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "r" / "index.html").read_text()
    assert "teacher.epochs=2" not in html and "posenet+pae+pae-rpr@3" in html
    assert all((tmp_path / "r" / ref).is_file() for ref in referenced(html))


def test_report_links_each_trained_models_learning_curves(tmp_path):
    store = write_store(tmp_path / "wd", decoder=False)
    folder = store.root / "artifacts" / "teacher" / "posenet-mobilenet-0123456789abcdef"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "log.csv").write_text("epoch,loss,lr,seconds\n1,2.5,0.001,3.0\n2,1.5,0.001,3.1\n3,1.1,0.0005,3.0\n")
    (store.root / "artifacts" / "student" / "pae-fedcba9876543210").mkdir(parents=True)  # given weights: no log
    html = write_report(store, tmp_path / "report").read_text()
    png = "curves-teacher-posenet-mobilenet-0123456789abcdef.png"
    assert png in referenced(html) and (tmp_path / "report" / png).stat().st_size > 1000
    assert "Learning curves of teacher posenet-mobilenet" in html and "fp 0123456789abcdef" in html
    assert not any(r.startswith("curves-student") for r in referenced(html))


def test_two_reports_written_at_once_into_one_folder_take_turns(tmp_path, monkeypatch):
    """Two runs finishing together in one work directory: the second report waits for the first, then replaces
    its files (it recorded them), instead of refusing them as a user's files."""
    import threading
    import time

    from aprbench.harness.results import report

    store = write_store(tmp_path / "wd", seeds=(0, 1))
    out = tmp_path / "report"
    slow_pages = report._write_pages

    def slow(*args, **kwargs):
        slow_pages(*args, **kwargs)
        time.sleep(0.5)  # long enough for the other writer to look at the folder meanwhile

    monkeypatch.setattr(report, "_write_pages", slow)
    errors: list[BaseException] = []

    def write(filters):
        try:
            write_report(store, out, filters=filters)
        except BaseException as exc:  # noqa: BLE001  collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f,)) for f in ([], ["refiner=-"])]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert not errors, errors
    refs = referenced((out / "index.html").read_text())
    assert refs and all((out / r).is_file() for r in refs)
