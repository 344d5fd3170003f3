"""The decoders table: PSNR / SSIM of each image decoder."""

from __future__ import annotations

import pandas as pd

from aprbench.harness.results.tables import Marks, fmt_mb
from aprbench.harness.results.leaderboard.board import Board
from aprbench.harness.results.leaderboard.provenance import recipe_labels


def decoders_table(board: Board, fmt: str) -> pd.DataFrame:
    """Decoder cells for people: method, decoder, scenes, PSNR (dB) and SSIM per split, MB."""
    dec = board.decoders
    if dec.empty:
        return dec
    marks = Marks(fmt)
    cols = {"method": "method", "decoder": "decoder", "scene": "scenes"}
    table = dec[list(cols)].rename(columns=cols).copy()
    for split in ("train", "test"):
        if f"{split}_psnr" in dec:
            table[f"{split} PSNR (dB)"] = dec[f"{split}_psnr"].map(lambda v: f"{v:.2f}")
        if f"{split}_ssim" in dec:
            table[f"{split} SSIM"] = dec[f"{split}_ssim"].map(lambda v: f"{v:.3f}")
    if "stored_bytes" in dec:
        table["MB"] = dec["stored_bytes"].map(fmt_mb)
    labels = recipe_labels(dec)
    if (labels != "").any():
        table["recipe"] = labels
    return table.map(marks.esc).rename(columns=marks.esc) if fmt in ("latex", "html") else table
