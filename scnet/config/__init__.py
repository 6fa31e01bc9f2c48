"""Run configuration: a typed schema (``schema``) filled from YAML files and ``key=value`` overrides (``load``).

```python
from scnet.config import describe, dump_config, load_config

cfg = load_config("configs/imagenet/scnet50.yaml", ["optim.lr=0.2", "train.epochs=1"])
cfg.optim.lr, cfg.peak_lr, cfg.micro_batch_size(world_size=8)
dump_config(cfg, f"{cfg.output_dir}/config.yaml")  # load_config() of that file gives cfg back
print(describe())  # every key with its type, default and help
```
"""

from .load import (
    apply_overrides,
    coerce_value,
    config_from_dict,
    config_to_dict,
    dump_config,
    format_config,
    load_config,
    parse_override,
    read_config_tree,
)
from .schema import (
    Config,
    ConfigError,
    DataConfig,
    KeyInfo,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    check,
    describe,
    schema_keys,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "KeyInfo",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "check",
    "coerce_value",
    "config_from_dict",
    "config_to_dict",
    "describe",
    "dump_config",
    "format_config",
    "load_config",
    "parse_override",
    "read_config_tree",
    "schema_keys",
]
