"""The leaderboard: the store's cells as the tables a paper prints.

:func:`build` reads the cell files (:mod:`harness.store.cells`), adds the columns of
every ``bench_leaderboard_columns`` hook and applies ``--filter``; it serves
``bench run``, ``bench leaderboard`` and ``bench report`` alike. :func:`text`
renders one of the views:

- ``scenes`` (default for people): per dataset, one row per method, one column
  per scene with ``median m, median °`` (units in the header) and an ``Average``
  column (mean of the per-scene medians, the field's convention; left empty for a
  method that lacks a scene), then stored MB (10^6 bytes) and ms per frame
  (:mod:`harness.store.costs`). Best value per column in bold (github, html,
  latex). The Δ of each row against its baseline follows in a second table
  (:func:`deltas_table`), published results (``--published``) in a third.

Every table is rendered with its legend (:mod:`.legend`): under it in the text
formats, in the caption of a complete LaTeX ``table`` environment
(:func:`harness.results.tables.render_block`). Digits follow the quantity and are
the same in every human format (:data:`harness.results.tables.DIGITS_LEGEND`).
- ``cells``: one row per cell, scene and iteration; people get a compact set of
  columns with the threshold accuracies of the scene's convention only
  (:func:`scene_thresholds`), machines (``csv``, ``json``) every column as plain
  numbers: bytes as integers, fractions 0-1, errors in metres and degrees.
- ``recall``: the fraction of frames within each threshold, per scene and averaged.
- ``stats``: per group of seeds and scene, mean ± std and the paired comparisons (:mod:`.seeds`,
  :mod:`harness.results.comparisons`): Δ of the medians with its interval, p and Holm-adjusted p, per-seed Δs,
  equivalence with ``--margin``; the Δ columns of ``scenes`` come from the same frame, marked and explained by
  :mod:`harness.results.significance`.

Several seeds of one recipe merge into one row (``mean ± std``, ``n``); rows
whose provenance differs (:data:`MERGE_KEYS`: all of
:data:`harness.store.cells.PROVENANCE_KEYS` but the creation date) never merge and
are labelled with what differs.
"""

from __future__ import annotations

from aprbench.harness.results.leaderboard.board import (GROUP_KEYS, INDOOR_THRESHOLDS, MERGE_KEYS, OUTDOOR_THRESHOLDS,
                                                        VIEWS, Board, apply_filters, apply_hooks, build, parse_filters)
from aprbench.harness.results.leaderboard.cells import cells_frame, cells_table
from aprbench.harness.results.leaderboard.decoders import decoders_table
from aprbench.harness.results.leaderboard.provenance import provenance_lines, recipe_labels
from aprbench.harness.results.leaderboard.recall import recall_frame, recall_table
from aprbench.harness.results.leaderboard.render import machine_frame, show, text
from aprbench.harness.results.leaderboard.scenes import deltas_table, row_labels, scenes_frame, scenes_table
from aprbench.harness.results.leaderboard.seeds import stats_frame
from aprbench.harness.results.leaderboard.thresholds import parse_thresholds, scene_thresholds
from aprbench.harness.results.published import published_frame
from aprbench.harness.results.tables import FORMATS, MACHINE_FORMATS, render_machine, render_table
from aprbench.harness.store.cells import IDENTITY_COLUMNS, method_name

__all__ = ["Board", "build", "text", "show", "machine_frame", "scenes_frame", "scenes_table", "deltas_table", "cells_frame",
           "cells_table", "recall_frame", "recall_table", "decoders_table", "stats_frame", "published_frame",
           "recipe_labels", "row_labels", "provenance_lines", "scene_thresholds", "parse_thresholds", "parse_filters",
           "apply_filters", "apply_hooks", "render_table", "render_machine", "method_name", "FORMATS",
           "MACHINE_FORMATS", "GROUP_KEYS", "MERGE_KEYS", "VIEWS", "INDOOR_THRESHOLDS", "OUTDOOR_THRESHOLDS",
           "IDENTITY_COLUMNS"]
