"""Published results of known methods (bundled ``published_results.csv``, with their sources), shown
beside reproduced rows and never mixed with them."""

from __future__ import annotations

from importlib import resources

import pandas as pd

from aprbench.harness.results.tables import Marks, _pair_text, _scene_header

def published_frame(datasets_scenes: dict[str, list[str]]) -> pd.DataFrame:
    """Published results (bundled ``published_results.csv``) for the scenes of each dataset, matched by scene name
    (case-insensitive): ``dataset`` (ours), ``method``, ``scene``, ``median_m``, ``median_deg``, ``source``,
    ``note``, ``published = True``. A published average goes in ``Average`` when the dataset shows all its scenes."""
    with resources.files("aprbench.harness.results").joinpath("published_results.csv").open("r", encoding="utf-8") as fh:
        table = pd.read_csv(fh)
    rows = []
    for dataset, scenes in datasets_scenes.items():
        ours = {s.lower(): s for s in scenes}
        for pub_dataset, part in table.groupby("dataset"):
            pub_scenes = {s.lower() for s in part["scene"] if s != "average"}
            if not (pub_scenes & set(ours)):
                continue
            for _, r in part.iterrows():
                scene = ours.get(str(r["scene"]).lower())
                if scene is None and r["scene"] == "average" and pub_scenes <= set(ours):
                    scene = "Average"
                if scene is None:
                    continue
                rows.append({"dataset": dataset, "published_dataset": pub_dataset, "method": r["method"],
                             "scene": scene, "median_m": float(r["median_position_m"]),
                             "median_deg": float(r["median_orientation_deg"]), "source": r["source"],
                             "note": r.get("note", ""), "published": True})
    return pd.DataFrame(rows)


def _published_table(dataset: str, scenes: list[str], marks: Marks) -> tuple[str, pd.DataFrame]:
    """The published results for ``scenes``, one row per method, sources as numbered footnotes
    (``frame.attrs["footnotes"]``)."""
    pub = published_frame({dataset: scenes})
    title = f"{dataset}: published results (not reproduced here; sources below)"
    if pub.empty:
        return title, pd.DataFrame()
    units = marks.fmt != "latex"
    sources = list(dict.fromkeys(pub["source"]))
    rows = []
    for method, mp in pub.groupby("method", sort=False):
        line = {("method" if units else "Method"): marks.esc(f"{method} [published]")}
        for s in [*scenes, "Average"]:
            r = mp[mp["scene"] == s]
            line[_scene_header(s, units, marks)] = "" if r.empty else _pair_text(r.iloc[0], marks, False, False, units)
        line["source"] = f"[{sources.index(mp['source'].iloc[0]) + 1}]"
        rows.append(line)
    frame = pd.DataFrame(rows)
    frame.attrs["footnotes"] = [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
    return title, frame

