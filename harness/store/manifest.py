"""Which files of an output folder aprbench wrote, so that a later write replaces only those.

An output folder the user names (``bench report --out DIR``, ``bench data render --out DIR``) may hold
the user's own files. aprbench records what it wrote in ``DIR/.aprbench-manifest.json``
(``{"kind": ..., "files": [names]}``); a later write of the same kind removes or replaces only files
listed there and refuses to overwrite any other file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from aprbench.harness.store.hdf5 import atomic_path

MANIFEST = ".aprbench-manifest.json"


def owned(folder: Path, kind: str) -> set[str] | None:
    """Names of the files aprbench wrote into ``folder`` as ``kind``; ``None`` when it holds no manifest of
    that kind (a damaged or foreign manifest counts as none)."""
    try:
        record = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != kind or not isinstance(record.get("files"), list):
        return None
    return {str(name) for name in record["files"] if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}


def record(folder: Path, kind: str, files: Iterable[str]) -> None:
    """Record ``files`` (names inside ``folder``) as written by aprbench as ``kind``."""
    with atomic_path(Path(folder) / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"kind": kind, "files": sorted({f for f in files if f})}, indent=1))


def legacy_report_files(folder: Path) -> set[str]:
    """Files of a report written before manifests: ``index.html``, ``report.md``, ``.cells.json`` and the
    PNGs its ``index.html`` shows (only when its ``.cells.json`` stamp is there)."""
    folder = Path(folder)
    if not (folder / ".cells.json").is_file():
        return set()
    try:
        page = (folder / "index.html").read_text(errors="replace")
    except OSError:
        page = ""
    shown = set(re.findall(r'<img src="([^"/]+\.png)"', page))
    return {"index.html", "report.md", ".cells.json", *shown}


def is_empty(folder: Path) -> bool:
    """Whether ``folder`` is absent or holds nothing."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
