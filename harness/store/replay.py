"""Replaying what a read-only command printed when nothing it read has changed.

``bench`` on a finished store, and ``bench leaderboard``, print tables that are
a pure function of the code (aprbench's and every plugin's source, the
registry), the command's options, a few environment variables and files on
disk (the cells, the dataset). Like ``make``, a command records its output
together with what it read; the next identical call checks those inputs —
file sizes, modification times and inodes (also of files a ``--set`` names, such as
``teacher.pretrained_file``), the source code's bytes — and, when every
one is unchanged, prints the recorded output without loading plugins, torch or
the dataset (a warm rerun in a fraction of a second instead of seconds).

Any difference is a miss and the command runs in full: a changed or added cell
file, a touched dataset file, an edited plugin or ``registry.toml``, another
``--set``, another working directory, another ``BENCH_*`` variable.
Records live in ``<workdir>/replay/`` and can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from aprbench.harness.store import hdf5
from aprbench.harness.store.hdf5 import atomic_path

SOURCE_SUFFIXES = (".py", ".toml", ".csv")
ENV_PREFIXES = ("BENCH_", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE")
MAX_FILES = 200_000  # inputs larger than this are not worth recording (their walk would cost more than it saves)


def _hash_tree(h: "hashlib._Hash", root: Path) -> None:
    """Every source file under ``root`` (or ``root`` itself), by relative path and content."""
    if root.is_file():
        h.update(f"{root}\n".encode() + root.read_bytes())
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(SOURCE_SUFFIXES):
                path = Path(dirpath, name)
                h.update(f"{path.relative_to(root)}\n".encode())
                h.update(path.read_bytes())


def _module_root(module: str) -> Path | None:
    """The file or package folder a dotted module name would be imported from (without importing it)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin) if spec.origin and spec.origin not in ("built-in", "frozen") else None


def code_digest(extra_plugins: Iterable[str] = ()) -> str:
    """A digest of every source that can change what a command prints: aprbench's packages (with the
    registry and the published results), the installed ``bench`` entry-point plugins and ``--plugin`` ones."""
    import aprbench.harness as harness

    h = hashlib.sha256(f"{sys.version}|{harness.__version__}\n".encode())
    for package in ("aprbench.harness", "aprbench.plugins"):
        root = _module_root(package)
        if root is not None:
            _hash_tree(h, root)
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="bench"), key=lambda e: (e.name, e.value)):
        h.update(f"ep:{ep.name}={ep.value}@{ep.dist.version if ep.dist else '?'}\n".encode())
        root = _module_root(ep.value.partition(":")[0])
        if root is not None:
            _hash_tree(h, root)
    for spec in extra_plugins:
        path = Path(spec)
        root = path if (spec.endswith(".py") or path.is_file()) else _module_root(spec)
        h.update(f"plugin:{spec}\n".encode())
        if root is not None and root.exists():
            _hash_tree(h, root)
    return h.hexdigest()


def inputs_digest(paths: Iterable[Path]) -> str | None:
    """A digest of the size and modification time of every file at or under ``paths`` (a missing one
    counts as missing); ``None`` when they hold more than :data:`MAX_FILES` files."""
    h = hashlib.sha256()
    count = 0
    for top in paths:
        top = Path(top)
        h.update(f"@{top}\n".encode())
        if not top.is_dir():
            try:
                st = top.stat()
                h.update(f"{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())  # inode: a file moved over it
            except OSError:
                h.update(b"missing\n")
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                count += 1
                if count > MAX_FILES:
                    return None
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                h.update(f"{os.path.relpath(os.path.join(dirpath, name), top)}|{st.st_size}|{st.st_mtime_ns}|"
                         f"{st.st_ino}\n".encode())
    return h.hexdigest()


class Replay:
    """The record of one command line in one work directory (``key`` covers the options, the working
    directory, the steering environment variables and the code)."""

    def __init__(self, workdir: Path, command: str, options: dict[str, Any], plugins: Iterable[str] = ()) -> None:
        env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
        blob = json.dumps([command, options, os.getcwd(), env, code_digest(plugins)], sort_keys=True, default=str)
        self._skipped = len(hdf5.SKIPPED)
        self.path = Path(workdir) / "replay" / f"{command}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"

    def load(self) -> dict[str, Any] | None:
        """The recorded payload when every recorded input is unchanged, else ``None``."""
        try:
            record = json.loads(self.path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("inputs"), list):
                raise ValueError("not a replay record")
        except (OSError, ValueError):  # absent, or damaged: the command runs and records again
            return None
        payload = record.get("payload")
        if not isinstance(payload, dict) or record.get("check") != _payload_check(payload):
            return None  # damaged or edited: not what this command printed
        digest = inputs_digest(Path(p) for p in record["inputs"])
        return payload if digest is not None and digest == record.get("digest") else None

    def save(self, payload: dict[str, Any], inputs: Iterable[Path]) -> None:
        """Record ``payload`` with the current state of ``inputs`` (files or folders, walked); nothing when a
        store file was skipped as busy or damaged (the next call reads the store again, without the warning)."""
        if len(hdf5.SKIPPED) > self._skipped:
            return
        inputs = [str(Path(p).resolve()) for p in inputs]
        digest = inputs_digest(Path(p) for p in inputs)
        if digest is None:
            return
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"inputs": inputs, "digest": digest, "payload": payload,
                                       "check": _payload_check(json.loads(json.dumps(payload, default=str)))}))


def _payload_check(payload: dict[str, Any]) -> str:
    """A digest of a recorded payload: a record whose payload does not match it is damaged."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def options_of(args: Any, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """A command's parsed options as plain values (``func`` and the names in ``ignore`` left out)."""
    skip = {"func", "argv", *ignore}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items()) if k not in skip}
