"""torch.hub entry points: ``torch.hub.load("<repo>", "scnet50", source="local", pretrained=PATH)``."""

dependencies = ["torch", "timm"]

from scnet.models import create_model as _create_model  # noqa: E402
from scnet.models.zoo import SC_MODELS as _SC_MODELS  # noqa: E402


def _entrypoint(name):
    def build(pretrained=None, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name} from the scnet zoo; ``pretrained`` is a local weights file (nothing is downloaded)."
    return build


for _name in _SC_MODELS:
    globals()[_name] = _entrypoint(_name)
