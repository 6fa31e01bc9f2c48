"""A training run: :func:`train` (``run.py``, the page to read first) and why a run stops with one line.

``run.py`` names the stages; ``setup.py`` builds everything from the Config; ``loop.py`` trains an epoch and
ends it; ``state.py`` holds what a checkpoint saves; ``manager.py`` resumes and saves checkpoints, and
``checkpoints.py`` writes their files; ``output.py`` is the run folder; ``stops.py`` handles signals and
non-finite losses; ``log.py`` the progress bar, TensorBoard and stderr.
"""

from ..runtime.distributed import PeerLostError
from .checkpoints import CheckpointWriteError
from .errors import NonFiniteLossError, RunError
from .run import train

__all__ = ["CheckpointWriteError", "NonFiniteLossError", "PeerLostError", "RunError", "train"]
