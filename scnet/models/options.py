"""A model from a config's ``model`` section: one path for the trainer and every reader of a checkpoint.

A checkpoint of this project keeps its resolved config, and options such as ``pooling_r`` or ``upsample``
change what a model computes without changing its state_dict: a consumer that built the model from the
name alone would load the weights into the wrong function, silently. So the trainer and every consumer of
a checkpoint build through :func:`model_options`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import ModelConfig
from ..layers.functional import SC_OPTION_KEYS
from .zoo import SC_MODELS

# create_model options that only SC models have (SCConv's calibration), with the release's values.
SC_OPTIONS: dict[str, Any] = {key: getattr(ModelConfig(), key) for key in SC_OPTION_KEYS}


def model_options(model: ModelConfig | Mapping[str, Any], training: bool = True) -> dict[str, Any]:
    """``create_model`` keyword arguments (besides name, num_classes, pretrained) for a config's model section.

    ``model`` is a :class:`ModelConfig` or the ``model`` dict saved in a checkpoint's config (keys it lacks,
    as in older checkpoints, take the schema defaults). SC options are passed only where they differ from
    the release's, so a baseline with the defaults builds as timm builds it. ``training=False`` leaves out
    the options that only matter for training from scratch (stochastic depth, zero-init). ``convert_sc=True``
    is passed when set (it changes the architecture), and with it the SC options apply to any model.

    Raises:
        ValueError: an SC option set away from its default on a model that is neither an SC model nor converted.
    """
    values = dataclasses.asdict(model) if isinstance(model, ModelConfig) else dict(model)
    defaults = dataclasses.asdict(ModelConfig())
    name = values.get("name", defaults["name"])
    options: dict[str, Any] = {}
    if training:
        options["drop_path_rate"] = values.get("drop_path_rate", defaults["drop_path_rate"])
        options["zero_init_last"] = values.get("zero_init_last", defaults["zero_init_last"])
    # convert_sc changes the architecture: every consumer of a checkpoint needs it, not only the trainer.
    convert_sc = values.get("convert_sc", defaults["convert_sc"])
    if convert_sc:
        options["convert_sc"] = True
    changed = {k: values[k] for k, default in SC_OPTIONS.items() if k in values and values[k] != default}
    if changed and name not in SC_MODELS and not convert_sc:
        key, value = next(iter(changed.items()))
        raise ValueError(
            f"model.{key}={value} is an SCConv option, and {name} is not an SC model "
            "(model.convert_sc=true makes it one)"
        )
    options.update(changed)
    return options
