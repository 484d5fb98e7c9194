"""A user's dictionary in an experiment (`--set dictionary=PATH`): any format `load_dictionary` reads, placed
at the experiment's `layer` when it records no hook, checked against the model before any model work, and
where the experiments' residual-stream vectors meet it.

The experiments' vectors live at resid_pre. A dictionary's atoms land there at `resid_pre_layer`: an SAE on
resid_pre of L at L; one on resid_post, mlp_out or attn_out of L (and a transcoder writing mlp_out of L) at
L + 1, the first residual stream that holds those writes. Its features are encoded from the experiments'
resid_pre activations only where that is what it reads (`reads_resid_pre`); a transcoder reads its own input
site, so the baselines that encode activations are left out for it, and said so.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from torch import Tensor

from interp.dictionaries import Dictionary, HooklessDictionaryWarning, hook_layer, hook_site, load_dictionary
from interp.directions import RESID_SITES
from interp.models import REGISTRY, cache_root, model_dimensions

LANDS_NEXT = ("resid_post", "mlp_out", "attn_out")


def load_user_dictionary(path: str, model: Any, *, layer: int | None = None, argument: str = "dictionary") -> Dictionary:
    """The dictionary at `path` (any format), at `layer`'s resid_pre when it records no hook point, checked against
    `model`: a loaded model (widths, layers, hook points), or a name / folder / .gguf (widths and layers, read
    without loading it)."""
    loaded = hasattr(model, "cfg")
    label = model if isinstance(model, str) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HooklessDictionaryWarning)  # said below, with the experiment's own fix
        dictionary = load_dictionary(path, model=model if loaded else label)
    if dictionary.hook_name is None:
        if layer is None or dictionary.transcoder:
            raise ValueError(f"{argument}: {path} records no hook point; set layer= (where an SAE reads resid_pre)"
                             if not dictionary.transcoder else
                             f"{argument}: the transcoder {path} records no input and output hooks; save it with them")
        dictionary = load_dictionary(dictionary, layer=layer, model=model if loaded else None)
    if not loaded and model is not None:
        _, width, depth = model_dimensions(installed_config(model))
        dictionary.check_dimensions(width, depth, argument)
    return dictionary


def installed_config(model: Any) -> Any:
    """A registry model's converted folder when one is cached (its config.json is the model that will load),
    else `model` itself (read by `model_dimensions`: the registry entry, a folder, a .gguf)."""
    if isinstance(model, str) and model in REGISTRY:
        folder = cache_root() / "models" / model
        if (folder / "config.json").is_file():
            return folder
    return model


def resid_pre_layer(dictionary: Dictionary) -> int | None:
    """The layer whose resid_pre first holds what the atoms write (None: not a residual-stream site)."""
    written = dictionary.write_hook
    site = hook_site(written)
    if site == "resid_pre":
        return hook_layer(written)
    return hook_layer(written) + 1 if site in LANDS_NEXT else None


def reads_resid_pre(dictionary: Dictionary, layer: int) -> bool:
    """Whether the dictionary's input is resid_pre of `layer` (resid_post of `layer` − 1 is the same tensor)."""
    return (dictionary.hook_name in (f"blocks.{layer}.hook_resid_pre", f"blocks.{layer - 1}.hook_resid_post")
            and not dictionary.transcoder)


def residual_read_site(dictionary: Dictionary, argument: str = "dictionary") -> str:
    """The residual-stream site a dictionary reads, for experiments that read activations at (layer, site)."""
    site = dictionary.site
    if site not in RESID_SITES:
        raise ValueError(f"{argument}: {dictionary.source} reads {dictionary.hook_name}; this experiment reads "
                         f"activations at residual-stream sites {RESID_SITES} only")
    return site


def input_codes(dictionary: Dictionary, layer: int, *activations: Tensor) -> tuple[Tensor | None, ...]:
    """The features of each set of resid_pre activations at `layer`, where that is the dictionary's input; else
    None for each (a transcoder reads its own input site, which these activations are not)."""
    if not reads_resid_pre(dictionary, layer):
        return tuple(None for _ in activations)
    return tuple(dictionary.encode(x) for x in activations)


def without_encoding_difference(config: Any) -> Any:
    """The sparse experiment's settings without its encoding-difference baseline, which needs `input_codes`."""
    def drop(methods: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(method for method in methods if method != "encdiff")

    return replace(config, methods=drop(config.methods), behaviour_methods=drop(config.behaviour_methods),
                   figure_methods=drop(config.figure_methods))
