"""The one ``teacher -> student -> refiner / decoder`` chain, shared by the matrix runner and the
``train`` / ``eval`` / ``decode`` commands.

Each model is named ``NAME`` or ``NAME=WEIGHTS.pth`` (given weights instead of
training: aprbench's own files or a plugin's reference layout); later models
are obtained for the earlier ones, so one chain always means one set of
fingerprints, whichever command asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the chain's types; torch loads only when a model is obtained
    from aprbench.harness.running.stages.context import Artifact, Context


def split_name(spec: str) -> tuple[str, Path | None]:
    """``"NAME=path.pth"`` -> ``("NAME", Path("path.pth"))``; ``"NAME"`` -> ``("NAME", None)``."""
    name, eq, path = spec.partition("=")
    return name.strip(), (Path(path) if eq else None)


@dataclass
class Chain:
    """The artifacts of one chain (later ones ``None`` when not asked for)."""

    teacher: Artifact
    student: Artifact | None = None
    refiner: Artifact | None = None
    decoder: Artifact | None = None


def obtain_chain(ctx: Context, teacher: str, student: str | None = None, encode: str = "estimate",
                 refiner: str | None = None, decoder: str | None = None) -> Chain:
    """Obtain (from the store, given weights, or training) every model of the chain, in order."""
    from aprbench.harness.running.stages.teacher import obtain_teacher

    t_name, t_ckpt = split_name(teacher)
    chain = Chain(obtain_teacher(ctx, t_name, t_ckpt))
    if student:
        from aprbench.harness.running.stages.student import obtain_student

        s_name, s_ckpt = split_name(student)
        chain.student = obtain_student(ctx, s_name, chain.teacher, encode=encode, checkpoint=s_ckpt)
    if refiner:
        from aprbench.harness.running.stages.refiner import obtain_refiner

        r_name, r_ckpt = split_name(refiner)
        chain.refiner = obtain_refiner(ctx, r_name, chain.teacher, chain.student, checkpoint=r_ckpt)
    if decoder:
        from aprbench.harness.running.stages.decoder import obtain_decoder

        d_name, d_ckpt = split_name(decoder)
        chain.decoder = obtain_decoder(ctx, d_name, chain.teacher, chain.student, checkpoint=d_ckpt)
    return chain
