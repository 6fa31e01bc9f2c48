"""``pretrained=True``: the release's weights by URL, from a real HTTP server on loopback (tests have no internet).

The server serves a release-format checkpoint made here (random weights under the release's tensor names) under
a name carrying its real sha256 prefix, as the release names its files. The package is pointed at it the way a
user points it at a mirror (``SCNET_WEIGHTS_URL``), and scnet50's entry of the release table names the served
file (its hash); the production table is checked as it is, below. ``TORCH_HOME`` is a fresh folder per test.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch

import scnet
from scnet.cli.train import main as train_main
from scnet.data.demo import make_demo
from scnet.models import zoo

from ..utils import REPO_ROOT
from . import reference_release

# The original release's model_urls (MCG-NKU/SCNet, scnet.py and scnet_v1d.py), written out: a changed table fails.
RELEASE_URLS = {
    "scnet50": "https://backseason.oss-cn-beijing.aliyuncs.com/scnet/scnet50-dc6a7e87.pth",
    "scnet50_v1d": "https://backseason.oss-cn-beijing.aliyuncs.com/scnet/scnet50_v1d-4109d1e1.pth",
    "scnet101": "https://backseason.oss-cn-beijing.aliyuncs.com/scnet/scnet101-44c5b751.pth",
}
TOL = 1e-9  # float64 on both sides, relative to the largest logit: only summation order may differ


@dataclass
class Server:
    """A static file server on 127.0.0.1 and the paths it was asked for."""

    url: str
    folder: Path
    requests: list[str]


@pytest.fixture(scope="module")
def server(module_tmp: Path) -> Iterator[Server]:
    folder = module_tmp / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:  # one line per request on stderr otherwise
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{httpd.server_address[1]}/", folder, requests)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def release(server: Server, scnet50_file: Path) -> str:
    """conftest's release-format scnet50 file, served as ``/scnet50-<its sha256 prefix>.pth``, and a copy with one
    byte flipped under the same name in ``/corrupt/``; returns the name."""
    data = scnet50_file.read_bytes()
    name = f"scnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (server.folder / name).write_bytes(data)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (server.folder / "corrupt").mkdir()
    (server.folder / "corrupt" / name).write_bytes(bytes(flipped))
    return name


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: Server, release: str) -> Path:
    """The package pointed at the server, scnet50's entry naming the served file; returns the (empty) cache."""
    monkeypatch.setitem(zoo.PUBLISHED, "scnet50", dataclasses.replace(zoo.PUBLISHED["scnet50"], file=release))
    monkeypatch.setenv("SCNET_WEIGHTS_URL", server.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    server.requests.clear()
    return tmp_path / "torch" / "hub" / "checkpoints"


def _assert_release_weights(model: torch.nn.Module, path: Path) -> None:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_release_table_is_the_authors():
    assert {name: w.url for name, w in zoo.PUBLISHED.items()} == RELEASE_URLS
    for name, url in RELEASE_URLS.items():
        assert timm.models.get_pretrained_cfg(name).url == url  # what timm's tools read
    assert set(timm.list_models(pretrained=True)) & set(zoo.SC_MODELS) == set(RELEASE_URLS)


def test_download_gives_the_release_logits_and_is_cached(cache, server, release, scnet50_file):
    model = scnet.create_model("scnet50", pretrained=True)
    assert server.requests == [f"/{release}"]
    cached = cache / release
    assert cached.read_bytes() == scnet50_file.read_bytes() and sorted(cache.iterdir()) == [cached]

    # The parity check: the release's forward (tests/models/reference_release.py) on the served file's tensors.
    served = torch.load(server.folder / release, map_location="cpu", weights_only=True)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        got = model.double().eval()(x)
        want = reference_release.forward({k: v.double() for k, v in served.items()}, x)
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL * want.abs().max().item())

    again = scnet.create_model("scnet50", pretrained=True)
    assert server.requests == [f"/{release}"], "the second call asked the server again"
    _assert_release_weights(again, scnet50_file)


def test_timm_and_torch_hub_download_the_same_file(cache, server, release, scnet50_file):
    model = timm.create_model("scnet50", pretrained=True)
    assert server.requests == [f"/{release}"]
    _assert_release_weights(model, scnet50_file)
    assert model.pretrained_cfg["file"] == str(cache / release)

    hub = torch.hub.load(str(REPO_ROOT), "scnet50", source="local", pretrained=True)
    _assert_release_weights(hub, scnet50_file)
    # timm's classifier adaptation: another number of classes keeps the new head, loads the rest.
    headless = timm.create_model("scnet50", pretrained=True, num_classes=0)
    assert not any(k.startswith("fc.") for k in headless.state_dict())
    _assert_release_weights(headless, scnet50_file)
    assert server.requests == [f"/{release}"], "the cache was not used"


def test_a_corrupted_download_is_refused_and_not_cached(cache, server, release, monkeypatch):
    monkeypatch.setenv("SCNET_WEIGHTS_URL", f"{server.url}corrupt/")
    with pytest.raises(scnet.models.DownloadError) as info:
        scnet.create_model("scnet50", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"{server.url}corrupt/{release}" in message and "invalid hash value" in message
    assert "pretrained='path/to/" in message and "model.pretrained=" in message
    assert server.requests == [f"/corrupt/{release}"]
    assert list(cache.iterdir()) == [], "a refused download left a file in the cache"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("failure", ["server down", "not on the server"])
def test_a_failed_download_names_the_url_and_the_local_file_way(failure, cache, server, monkeypatch):
    name, base = "scnet50_v1d", server.url  # the served folder has no scnet50_v1d file: a 404
    if failure == "server down":
        name, base = "scnet50", f"http://127.0.0.1:{_free_port()}/"
        monkeypatch.setenv("SCNET_WEIGHTS_URL", base)
    with pytest.raises(scnet.models.DownloadError) as info:
        scnet.create_model(name, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot download {base}{zoo.PUBLISHED[name].file} (" in message
    assert f"pretrained='path/to/{zoo.PUBLISHED[name].file}'" in message
    assert f"model.pretrained=path/to/{zoo.PUBLISHED[name].file}" in message
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.parametrize("build", [scnet.create_model, timm.create_model], ids=["scnet", "timm"])
@pytest.mark.parametrize("name", ["scnet101_v1d", "sc_resnext50_32x4d"])
def test_a_model_without_released_weights_is_one_line(build, name, cache, server):
    with pytest.raises(ValueError) as info:
        build(name, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and name in message
    assert "scnet50, scnet50_v1d, scnet101" in message and "pretrained='path/to/" in message
    assert server.requests == []


@pytest.fixture(scope="module")
def three_classes(module_tmp: Path) -> Path:
    return make_demo(module_tmp / "data", num_classes=3, train_per_class=2, val_per_class=1, progress=False)


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """configs/finetune.yaml with model.pretrained=true on ``data``: one step of a vanishing lr, so that the
    checkpoint holds the weights the run started from (to ~1e-33)."""
    return [
        *("--config", str(REPO_ROOT / "configs" / "finetune.yaml")),
        "model.pretrained=true",
        f"data.root={data}",
        "model.num_classes=3",
        "model.channels_last=false",  # NCHW is the faster layout on CPU
        "data.image_size=100",
        "data.batch_size=6",
        "data.workers=0",
        "train.epochs=1",
        "train.tensorboard=false",
        f"output_dir={out}",
        "optim.lr=1e-30",
        "schedule.warmup_epochs=0",  # warm-up starts at an absolute warmup_lr
        *extra,
    ]


def test_scnet_train_starts_from_the_downloaded_weights(
    cache, server, release, scnet50_file, three_classes, tmp_path, capsys
):
    out = tmp_path / "run"
    code = train_main(_train_argv(three_classes, out))
    err = capsys.readouterr().err
    assert code == 0, err
    assert server.requests == [f"/{release}"]
    # The 1000-class head of the file is left out in one line naming the cached file; the rest is the file's.
    assert f"{cache / release}: not loaded into scnet50: fc.weight, fc.bias" in err
    state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert state["global_step"] == 1  # 6 training images at batch 6
    served = torch.load(scnet50_file, map_location="cpu", weights_only=True)
    for key, value in state["model"].items():
        if key.startswith("fc.") or key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # the new head; BN statistics moved by the training-mode forward
        torch.testing.assert_close(value, served[key], rtol=0, atol=1e-20, msg=key)


@pytest.mark.parametrize("failure", ["server down", "no released weights"])
def test_scnet_train_says_what_failed_in_one_line(failure, cache, server, three_classes, tmp_path, capsys, monkeypatch):
    extra, want = ["model.name=scnet101_v1d"], "pretrained=True: no released weights for scnet101_v1d"
    if failure == "server down":
        extra, want = [], "cannot download http://127.0.0.1:"
        monkeypatch.setenv("SCNET_WEIGHTS_URL", f"http://127.0.0.1:{_free_port()}/")
    code = train_main(_train_argv(three_classes, tmp_path / "run", *extra))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scnet-train: error:")]
    assert code == 2
    assert len(errors) == 1 and want in errors[0] and "model.pretrained=path/to/" in errors[0], errors
    assert not (tmp_path / "run" / "last.pth").exists()
