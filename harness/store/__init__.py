"""The store: the work directory's HDF5 files and weights with their fingerprints and atomic writes, the
cell files the results are read from, replayed command output.

Modules: ``hdf5``, ``cells``, ``replay``, ``housekeeping`` (``bench store list`` / ``prune``).
The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "Store": ".hdf5",
    "fingerprint": ".hdf5",
    "atomic_path": ".hdf5",
    "default_workdir": ".hdf5",
    "read_h5": ".hdf5",
    "write_h5": ".hdf5",
    "save_state": ".hdf5",
    "load_state": ".hdf5",
    "load_into": ".hdf5",
    "CellFile": ".cells",
    "cell_files": ".cells",
    "identity": ".cells",
    "method_name": ".cells",
    "pose_rows": ".cells",
    "decoder_rows": ".cells",
    "IDENTITY_COLUMNS": ".cells",
    "PROVENANCE_KEYS": ".cells",
    "MODEL_COLUMNS": ".cells",
    "MACHINE_KEYS": ".cells",
    "stored_cells": ".housekeeping",
    "stored_models": ".housekeeping",
    "prune_plan": ".housekeeping",
    "Replay": ".replay",
    "options_of": ".replay",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
