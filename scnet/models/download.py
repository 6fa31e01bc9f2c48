"""Weights by URL (``pretrained=True``): downloaded once into torch.hub's cache, checked against the sha256 prefix
in the file's name (torch.hub's convention, ``scnet50-dc6a7e87.pth``), then read like any local file.

The download, its hash check and its never-half-written file are torch.hub's own
(:func:`torch.hub.download_url_to_file`); this module adds where the file goes, the mirror override and the one
line a user reads when it fails.
"""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import torch.hub

from ..runtime.distributed import is_main_process
from ..runtime.messages import first_line
from .weights import CheckpointError

WEIGHTS_URL_ENV = "SCNET_WEIGHTS_URL"
"""Environment variable: a folder URL that replaces the folder of every release URL (a mirror of the files, or
a test's server); the file names, and so the hashes checked, stay the release's."""


class DownloadError(CheckpointError):
    """A weights file could not be downloaded, or what arrived is not the file (its hash differs)."""


def resolve_url(url: str) -> str:
    """``url``, its folder replaced by ``$SCNET_WEIGHTS_URL`` when that is set."""
    mirror = os.environ.get(WEIGHTS_URL_ENV, "").strip()
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"


def cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``url``'s file is kept: ``cache_dir``, else ``<torch.hub.get_dir()>/checkpoints`` (under
    ``$TORCH_HOME``, where torch.hub and timm keep theirs), by the URL's file name."""
    folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / os.path.basename(urlsplit(url).path)


def how_to_pass_a_file(name: str = "file.pth") -> str:
    """The end of a message about weights that cannot be had by name: how to give a local file instead."""
    return f"pass a local file instead: pretrained='path/to/{name}' (scnet-train: model.pretrained=path/to/{name})"


def cached_download(url: str, cache_dir: str | os.PathLike | None = None, progress: bool | None = None) -> Path:
    """The local copy of ``url`` (after :func:`resolve_url`), downloaded on the first call only.

    The file's sha256 must start with the hex digits after the last ``-`` of its name; a download that does
    not is refused and leaves nothing in the cache. ``progress`` (default: on when stderr is a terminal, in
    the main process only) shows torch.hub's progress bar.

    Raises:
        DownloadError: one line naming the URL (offline, no such file on the server, a hash mismatch) and how
            to pass a local file instead.
    """
    url = resolve_url(url)
    path = cache_path(url, cache_dir)
    if path.is_file():
        return path
    found = torch.hub.HASH_REGEX.search(path.name)
    hash_prefix = found.group(1) if found else ""
    if not hash_prefix:  # the release's names all carry one: a file that cannot be checked is a mistake
        raise DownloadError(f"{url}: no sha256 prefix in the file name (name-<hex>.pth), so it cannot be checked")
    main = is_main_process()
    if progress is None:
        progress = main and sys.stderr.isatty()
    if main:
        print(f"Downloading {url} to {path}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=progress)
    except RuntimeError as e:  # torch.hub's hash check; its temporary file is already removed
        raise DownloadError(
            f"{url}: {first_line(e)}: a corrupted or altered download, refused and not cached; try again, or "
            + how_to_pass_a_file(path.name)
        ) from e
    except (OSError, http.client.HTTPException, ValueError) as e:  # offline, refused, 404, cut short, bad URL
        raise DownloadError(f"cannot download {url} ({first_line(e)}); {how_to_pass_a_file(path.name)}") from e
    return path
