"""Published results of known methods (bundled ``published_results.csv``, with their sources and notes), shown
beside reproduced rows and never mixed with them.

Caveats travel with the numbers: a published row evaluated against another ground truth (hloc's 7Scenes figures
are against SfM pseudo ground truth) carries :data:`GT_MARK`, a scene where two sources give the same method
different numbers carries :data:`DISAGREE_MARK`, and each source is a numbered footnote with the notes its rows
share. The csv / json views carry every row's full ``note``.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pandas as pd

from aprbench.harness.results.tables import Marks, _pair_text, _scene_header, fmt_deg, fmt_m

GT_MARK = "§"
DISAGREE_MARK = "‡"
# the real datasets the bundled figures are for: their name in the file -> (our dataset plugin, how to get it)
KNOWN_DATASETS = {
    "7Scenes": ("sevenscenes", "--dataset sevenscenes:root=DIR (Microsoft's RGB-D Dataset 7-Scenes, native layout)"),
    "CambridgeLandmarks": ("cambridge", "--dataset cambridge:root=DIR (Cambridge Landmarks, Kendall et al. 2015, "
                                        "from the University of Cambridge data repository)"),
}
# parentheses naming who quoted a figure, not what was run: two such rows are the same method
_QUOTED = re.compile(r"\s*\((?:as quoted by [^()]*|as listed by [^()]*|paper value quoted in issue|official result, "
                     r"quoted|100% train data)\)")
GT_NOTE = (f"{GT_MARK} evaluated against SfM (COLMAP) pseudo ground truth of 7Scenes (hloc's "
           "7scenes_sfm_triangulated models), not the dSLAM poses the dataset ships and APR results, ours "
           "included, are measured against; not directly comparable")


def bundled() -> pd.DataFrame:
    """The bundled table: ``method, dataset, scene, median_position_m, median_orientation_deg, source, note``."""
    with resources.files("aprbench.harness.results").joinpath("published_results.csv").open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh)


def _matches(dataset: str, pub_dataset: str) -> bool:
    """Whether published figures of ``pub_dataset`` may stand beside our ``dataset``: the real dataset's own plugin,
    or a dataset of another plugin (a labels CSV of the real data) by scene name; never the synthetic scenes."""
    ours = {plugin for plugin, _ in KNOWN_DATASETS.values()}
    if dataset == "synthetic":
        return False
    if dataset in ours:
        return KNOWN_DATASETS.get(pub_dataset, ("",))[0] == dataset
    return True


def published_frame(datasets_scenes: dict[str, list[str]]) -> pd.DataFrame:
    """Published results (bundled ``published_results.csv``) for the scenes of each dataset, matched by dataset and
    scene name (case-insensitive): ``dataset`` (ours), ``published_dataset``, ``method``, ``scene``, ``median_m``,
    ``median_deg``, ``source``, ``note``, ``ground_truth`` (``sfm-pseudo-gt`` or ``dataset``), ``sources_disagree``,
    ``published = True``. A published average goes in ``Average`` when the dataset shows all its scenes."""
    table = bundled()
    rows = []
    for dataset, scenes in datasets_scenes.items():
        ours = {s.lower(): s for s in scenes}
        for pub_dataset, part in table.groupby("dataset"):
            pub_scenes = {s.lower() for s in part["scene"] if s != "average"}
            if not _matches(dataset, pub_dataset) or not (pub_scenes & set(ours)):
                continue
            for _, r in part.iterrows():
                scene = ours.get(str(r["scene"]).lower())
                if scene is None and r["scene"] == "average" and pub_scenes <= set(ours):
                    scene = "Average"
                if scene is None:
                    continue
                note = "" if pd.isna(r.get("note")) else str(r["note"])
                rows.append({"dataset": dataset, "published_dataset": pub_dataset, "method": r["method"],
                             "scene": scene, "median_m": float(r["median_position_m"]),
                             "median_deg": float(r["median_orientation_deg"]), "source": r["source"], "note": note,
                             "ground_truth": "sfm-pseudo-gt" if "pseudo-GT" in note else "dataset",
                             "published": True})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["sources_disagree"] = _disagreements(frame).astype(bool)
    return frame


def _disagreements(pub: pd.DataFrame) -> pd.Series:
    """Per row: whether another source gives the same method (quoting parentheses removed) on the same scene other
    numbers (beyond their last published digit)."""
    base = pub["method"].map(lambda m: _QUOTED.sub("", str(m)).strip())
    out = pd.Series(False, index=pub.index)
    for _, idx in pub.groupby([base, pub["dataset"], pub["scene"]]).groups.items():
        vals = pub.loc[idx, ["median_m", "median_deg"]].to_numpy()
        if len(vals) > 1 and (np.ptp(vals, axis=0) > 0.005).any():
            out.loc[idx] = True
    return out


def no_published_text(dataset: str, scenes: list[str]) -> str:
    """What to say when nothing is published for ``dataset``'s scenes: which real datasets and scenes are known, and
    how to run on them."""
    table = bundled()
    known = []
    for pub_dataset, (plugin, how) in KNOWN_DATASETS.items():
        names = sorted({s for s in table.loc[table["dataset"] == pub_dataset, "scene"] if s != "average"})
        known.append(f"{pub_dataset} ({', '.join(names)}): {how}")
    why = " (synthetic scenes are not the real ones, whatever their names)" if dataset == "synthetic" else ""
    return (f"no published results for {dataset}'s scenes ({', '.join(scenes)}){why}. Published results are bundled "
            f"for {'; for '.join(known)}")


def _published_table(dataset: str, scenes: list[str], marks: Marks) -> tuple[str, pd.DataFrame]:
    """The published results for ``scenes``, one row per method, with caveat marks; sources and caveats as footnotes
    (``frame.attrs["footnotes"]``); ``frame.attrs["empty"]`` says how to get published results when none match."""
    pub = published_frame({dataset: scenes})
    title = f"{dataset}: published results (not reproduced here; sources below)"
    if pub.empty:
        frame = pd.DataFrame()
        frame.attrs["published"] = True
        frame.attrs["empty"] = no_published_text(dataset, scenes)
        return title, frame
    units = False  # in the header
    sources = list(dict.fromkeys(pub["source"]))
    rows = []
    for method, mp in pub.groupby("method", sort=False):
        gt = GT_MARK if (mp["ground_truth"] == "sfm-pseudo-gt").any() else ""
        line = {("method" if marks.fmt != "latex" else "Method"): marks.esc(f"{method} [published]{gt}")}
        for s in [*scenes, "Average"]:
            r = mp[mp["scene"] == s]
            mark = DISAGREE_MARK if not r.empty and r["sources_disagree"].iloc[0] else ""
            line[_scene_header(s, units, marks)] = "" if r.empty else _pair_text(r.iloc[0], marks, False, False, units,
                                                                                 mark)
        line["source"] = f"[{sources.index(mp['source'].iloc[0]) + 1}]"
        rows.append(line)
    frame = pd.DataFrame(rows)
    frame.attrs["published"] = True
    frame.attrs["footnotes"] = _footnotes(pub, sources)
    frame.attrs["legend"] = ["published figures (median position error m, median orientation error °), at the digits "
                             "of the tables above; [n]: the source, in the notes with what its rows share; "
                             f"{GT_MARK} and {DISAGREE_MARK}: caveats, in the notes"]
    return title, frame


def _footnotes(pub: pd.DataFrame, sources: list[str]) -> list[str]:
    """``[n] source — the notes all its rows share``, then the caveat marks that occur."""
    notes = []
    for i, source in enumerate(sources):
        parts = [[p.strip() for p in str(n).split(";") if p.strip()] for n in pub.loc[pub["source"] == source, "note"]]
        shared = [p for p in parts[0] if all(p in other for other in parts[1:])] if parts else []
        notes.append(f"[{i + 1}] {source}" + (f" — {'; '.join(shared)}" if shared else ""))
    if (pub["ground_truth"] == "sfm-pseudo-gt").any():
        notes.append(GT_NOTE)
    disagree = pub[pub["sources_disagree"]]
    if not disagree.empty:
        base = disagree["method"].map(lambda m: _QUOTED.sub("", str(m)).strip())
        cases = []
        for (name, scene), part in disagree.groupby([base, disagree["scene"]], sort=False):
            values = " vs ".join(f"{fmt_m(r.median_m)} m, {fmt_deg(r.median_deg)}° [{sources.index(r.source) + 1}]"
                                 for r in part.itertuples())
            cases.append(f"{name} on {scene}: {values}")
        notes.append(f"{DISAGREE_MARK} sources disagree for this method and scene: " + "; ".join(cases))
    return notes
