"""The plugin contract: hook specifications, the plugin manager, the interfaces a plugin implements, model
families and the registry of recipes, and which models combine.

Modules: ``hookspecs``, ``interfaces``, ``manager``, ``registry``, ``recipes``, ``compat``, ``identity`` (what a
plugin's code is: its VERSION, source digest and origin).
The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "hookimpl": ".hookspecs",
    "hookspec": ".hookspecs",
    "Decoder": ".interfaces",
    "Latents": ".interfaces",
    "PoseData": ".interfaces",
    "PoseIndexRefiner": ".interfaces",
    "Refiner": ".interfaces",
    "Student": ".interfaces",
    "Teacher": ".interfaces",
    "LABEL_COLUMNS": ".interfaces",
    "POSE_COLUMNS": ".interfaces",
    "decode_poses": ".interfaces",
    "BenchPluginManager": ".manager",
    "KINDS": ".manager",
    "Registry": ".manager",
    "get_manager": ".manager",
    "get_registry": ".manager",
    "call_observers": ".manager",
    "ModelFamily": ".registry",
    "dataset_defaults": ".registry",
    "load_registry": ".registry",
    "Recipe": ".recipes",
    "TrainConfig": ".recipes",
    "Override": ".recipes",
    "resolve": ".recipes",
    "describe": ".recipes",
    "known_keys": ".recipes",
    "parse_sets": ".recipes",
    "check_overrides": ".recipes",
    "check_profile": ".recipes",
    "PluginIdentity": ".identity",
    "plugin_identity": ".identity",
    "Incompatible": ".compat",
    "check_student": ".compat",
    "check_refiner": ".compat",
    "check_decoder": ".compat",
    "uses_student": ".compat",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
