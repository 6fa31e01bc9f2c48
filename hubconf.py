"""torch.hub entry points, one per SC model of the zoo.

``torch.hub.load("<repo>", "scnet50", pretrained=True)`` gives the original release's weights (scnet50,
scnet50_v1d, scnet101): downloaded from the authors' URL on first use, checked against the sha256 prefix in the
file's name and kept in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), so a second load needs no network.
``pretrained="path/to/file.pth"`` loads a local file instead (a release ``.pth``, ``.safetensors``, or a scnet
checkpoint); other keyword arguments are ``scnet.create_model``'s (``num_classes=10``, ``features_only=True``).
``source="local"`` loads from a clone: ``torch.hub.load("path/to/clone", "scnet50", source="local", ...)``.
"""

dependencies = ["torch", "timm"]

from scnet.models import create_model as _create_model  # noqa: E402
from scnet.models.zoo import PUBLISHED as _PUBLISHED  # noqa: E402
from scnet.models.zoo import SC_MODELS as _SC_MODELS  # noqa: E402


def _entrypoint(name):
    def build(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    if name in _PUBLISHED:
        weights = "``pretrained=True``: the release's weights, downloaded once (torch.hub's cache)"
    else:
        weights = "no released weights (``pretrained=True`` is an error)"
    build.__name__ = name
    build.__doc__ = f"{name} from the scnet zoo; {weights}; ``pretrained=PATH``: a local weights file."
    return build


for _name in _SC_MODELS:
    globals()[_name] = _entrypoint(_name)
