"""Data roots by name: a folder path, or the reserved name of a built-in dataset.

``demo`` (exactly that string) names the procedurally drawn demo set, kept at ``data/demo`` relative to
the working directory: the folder that ``scnet-data demo --out data/demo`` writes. Any other root is a
folder that must already exist; a data path is never invented, so a typo is an error, not a new dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

from .demo import MANIFEST, make_demo

DEMO = "demo"
DEMO_FOLDER = Path("data") / "demo"
# The manifest keys that are make_demo's parameters: an existing set is completed with its own sizes.
_DEMO_PARAMETERS = ("num_classes", "train_per_class", "val_per_class", "seed")


def resolve_root(root: str, draw: bool = False, key: str = "data.root") -> Path:
    """The folder that the data root ``root`` names; ``key`` is how the user gave it, for error messages.

    ``demo`` is the built-in demo set at ``data/demo``: with ``draw`` it is drawn there when missing
    and completed when interrupted (an existing set keeps the sizes it was made with); without ``draw``
    it must already be there. Any other ``root`` must be an existing folder.

    Raises:
        ValueError: one line naming ``key`` and ``root``: no such folder, or the demo set not made yet.
    """
    if root == DEMO:
        return _demo_folder(draw, key)
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{key}: {root}: no such folder")
    return folder


def _demo_folder(draw: bool, key: str) -> Path:
    """``data/demo``, drawn or completed there first when ``draw``."""
    if draw:
        # A complete set returns at once (~10 ms for the default 1,200 images: stats and one manifest read).
        make_demo(DEMO_FOLDER, **_demo_sizes(DEMO_FOLDER), progress=True)
    elif not (DEMO_FOLDER / MANIFEST).is_file():
        raise ValueError(
            f"{key}: {DEMO}: the built-in demo set is not at {DEMO_FOLDER} (relative to {Path.cwd()}); "
            f"make it with `scnet-data demo --out {DEMO_FOLDER}`"
        )
    return DEMO_FOLDER


def _demo_sizes(folder: Path) -> dict[str, int]:
    """The parameters of the demo set already in ``folder`` (so it is not resized), or {} for the defaults."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return {name: int(manifest[name]) for name in _DEMO_PARAMETERS}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # none yet, or unreadable: draw the default set (make_demo keeps the files already right)
