"""Which models combine: latent sizes and scene rules, used by the matrix and by every stage.

Each check takes built (untrained) models and raises :class:`Incompatible`
with the reason; the matrix turns that into a refused combination before any
work, a stage into an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from aprbench.harness.errors import BenchError

if TYPE_CHECKING:
    import torch


class Incompatible(BenchError):
    """Two models that cannot be combined (the message says why)."""


def multi_scene(model: Any) -> bool:
    return bool(getattr(model, "multi_scene", False))


def latent_dim(model: Any, default: int = 256) -> int:
    return int(getattr(model, "latent_dim", default))


def uses_student(refiner: Any) -> bool:
    """Whether a refiner encodes poses with the student (PAE) at test time (else it retrieves training frames)."""
    return getattr(refiner, "neighbours", "student") != "retrieval"


def check_student(name: str, student: Any, teacher_name: str, teacher: Any, scenes: int) -> None:
    """A student must reproduce its teacher's latents: same size, and scene-aware under a multi-scene teacher."""
    s_dim, t_dim = latent_dim(student, -1), latent_dim(teacher)
    if s_dim != t_dim:
        raise Incompatible(f"student {name!r} has latent size {s_dim} but teacher {teacher_name!r} has latent size "
                           f"{t_dim}; a student must reproduce its teacher's latents")
    if multi_scene(teacher) and not multi_scene(student) and scenes > 1:
        raise Incompatible(f"student {name!r} is single-scene but teacher {teacher_name!r} is multi-scene over "
                           f"{scenes} scenes; its latents depend on the scene: use a multi-scene student")
    if multi_scene(student) and not multi_scene(teacher):
        raise Incompatible(f"student {name!r} is multi-scene but teacher {teacher_name!r} is single-scene")


def check_refiner(name: str, refiner: Any, teacher_name: str, teacher: Any, student_name: str | None,
                  student: Any | None) -> None:
    """A refiner works on its teacher's latents; a PAE-based one needs a student of the teacher's kind."""
    if latent_dim(refiner) != latent_dim(teacher):
        raise Incompatible(f"refiner {name!r} has latent size {latent_dim(refiner)} but teacher {teacher_name!r} "
                           f"produces {latent_dim(teacher)}")
    if not uses_student(refiner):
        return
    if student is None:
        raise Incompatible(f"refiner {name!r} encodes poses with a student (PAE); give one (--student)")
    _same_kind("refiner", name, student_name, student, teacher_name, teacher)


def check_decoder(name: str, teacher_name: str, teacher: Any, student_name: str | None, student: Any | None) -> None:
    """A decoder decodes a student's latents, which must be its teacher's (size and scene kind)."""
    if student is None:
        raise Incompatible(f"decoder {name!r} decodes a student's (PAE's) latents; give one (--student)")
    _same_kind("decoder", name, student_name, student, teacher_name, teacher)


def _same_kind(kind: str, name: str, student_name: str | None, student: Any, teacher_name: str, teacher: Any) -> None:
    if latent_dim(student) != latent_dim(teacher):
        raise Incompatible(f"{kind} {name!r}: student {student_name!r} has latent size {latent_dim(student)} but "
                           f"teacher {teacher_name!r} has {latent_dim(teacher)}; they cannot be combined")
    if multi_scene(student) != multi_scene(teacher):
        which = ("multi-scene", "single-scene") if multi_scene(student) else ("single-scene", "multi-scene")
        raise Incompatible(f"{kind} {name!r}: student {student_name!r} is {which[0]} but teacher {teacher_name!r} "
                           f"is {which[1]}; a {kind} needs a student of the same kind as its teacher")


# the scene order of the reference's multi-scene models: np.unique of the training labels' scene names
SCENE_CATALOGUES = (
    ("chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs"),  # 7Scenes
    ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch"),  # Cambridge Landmarks (the reference's four)
)


def model_scene_index(scenes: list[str], num_model_scenes: int) -> list[int] | None:
    """The model's scene index of each of the data's ``scenes``: the same order when the counts agree; for a model
    of more scenes (given weights evaluated on a subset), the index in a known catalogue of that many scenes whose
    names hold the data's (the reference's alphabetical order); ``None`` when unknown."""
    if len(scenes) == num_model_scenes:
        return list(range(len(scenes)))
    for catalogue in SCENE_CATALOGUES:
        if len(catalogue) == num_model_scenes and set(scenes) <= set(catalogue):
            return [catalogue.index(s) for s in scenes]
    return None


def to_model_scenes(scene_id: Any, scenes: Sequence[str], model: Any) -> torch.Tensor:
    """The dataset's scene ids ``(N,)`` (indices into ``scenes``) as the scene index a multi-scene ``model`` of
    ``num_scenes`` scenes knows them by (:func:`model_scene_index`: e.g. 1 for fire under a 7Scenes checkpoint
    evaluated on fire's label file), as int64; unchanged for a single-scene model, for a model of as many scenes
    as the data, and where the model's order is unknown. What a PAE or a scene-conditioned encoder is given."""
    import numpy as np
    import torch

    ids = torch.as_tensor(np.asarray(scene_id), dtype=torch.int64)
    count = getattr(model, "num_scenes", None)
    if not multi_scene(model) or count is None:
        return ids
    index = model_scene_index(list(scenes), int(count))
    return ids if index is None else torch.as_tensor(index, dtype=torch.int64)[ids]
