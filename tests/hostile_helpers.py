"""Running ``bench`` in-process as a user would, for the hostile-input tests: exit code, stdout, stderr
(warnings as the command line prints them: ``bench: warning: …``), and snapshots of folders to show that
nothing outside the work directory or the named output changed."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(*argv: object) -> Result:
    """``bench ARGV`` in this process; an exception escaping ``main`` (a traceback for the user) fails the test."""
    from aprbench.harness.cli.main import main  # each call starts with a new plugin manager

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    said = "".join(f"bench: warning: {w.message}\n" for w in caught if issubclass(w.category, UserWarning))
    result = Result(code, out.getvalue(), err.getvalue() + said)
    assert "Traceback" not in result.err + result.out
    return result


def snapshot(folder: Path, *skip: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``folder``, except under ``skip``."""
    out = {}
    for p in Path(folder).rglob("*"):
        if p.is_file() and not any(s == p or s in p.parents for s in skip):
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out
