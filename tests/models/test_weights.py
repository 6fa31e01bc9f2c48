"""Loading weight files: the release's format and its relatives load exactly; anything else fails cleanly."""

from __future__ import annotations

import collections

import pytest
import safetensors.torch
import torch

import scnet


def _assert_loaded(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], skip: str = "") -> None:
    """Every tensor of ``model`` (but those under ``skip``) equals the file's, bit for bit."""
    own = model.state_dict()
    assert own, "empty model"
    for key, value in own.items():
        if skip and key.startswith(skip):
            continue
        assert torch.equal(value, state_dict[key]), key


def test_published_format_round_trip(scnet50_file, scnet50_state_dict):
    model = scnet.create_model("scnet50", pretrained=scnet50_file).eval()
    assert list(model.state_dict()) == list(scnet50_state_dict)
    _assert_loaded(model, scnet50_state_dict)

    # Identical outputs to a model holding the same tensors directly.
    twin = scnet.create_model("scnet50").eval()
    twin.load_state_dict(scnet50_state_dict, strict=True)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "fmt",
    ["safetensors", "train_checkpoint_model", "train_checkpoint_state_dict", "ddp_prefix"],
)
def test_other_checkpoint_formats_load(fmt, tmp_path, scnet50_state_dict):
    sd = scnet50_state_dict
    if fmt == "safetensors":
        path = tmp_path / "scnet50.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / f"{fmt}.pth"
        payload = {
            "train_checkpoint_model": {"model": sd, "epoch": 3},
            "train_checkpoint_state_dict": {"state_dict": sd, "epoch": 3, "arch": "scnet50"},
            "ddp_prefix": {f"module.{k}": v for k, v in sd.items()},  # saved from a DistributedDataParallel
        }[fmt]
        torch.save(payload, path)
    _assert_loaded(scnet.create_model("scnet50", pretrained=path), sd)


def test_fine_tuning_loads_all_but_the_classifier(scnet50_file, scnet50_state_dict):
    torch.manual_seed(0)
    model = scnet.create_model("scnet50", num_classes=10, pretrained=scnet50_file)
    assert model.fc.weight.shape == (10, 2048)
    assert torch.isfinite(model.fc.weight).all() and model.fc.weight.abs().sum() > 0
    _assert_loaded(model, scnet50_state_dict, skip="fc.")


def test_headless_model_loads_the_backbone(scnet50_file, scnet50_state_dict):
    """num_classes=0 (timm's "no classifier") is the usual way to get a pooled-feature extractor."""
    model = scnet.create_model("scnet50", num_classes=0, pretrained=scnet50_file)
    assert not any(k.startswith("fc.") for k in model.state_dict())
    _assert_loaded(model, scnet50_state_dict)


def _write_marker(path):
    """Side effect that unpickling the file below would run."""
    with open(path, "w") as f:
        f.write("unpickled")
    return {}


class _Payload:
    """An arbitrary object whose unpickling writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _write_marker, (str(self.marker),)


def test_arbitrary_pickled_object_is_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save(_Payload(marker), path)
    with pytest.raises(scnet.CheckpointError, match="evil.pth") as info:
        scnet.create_model("scnet50", pretrained=path)
    assert "\n" not in str(info.value)
    assert not marker.exists(), "the checkpoint was unpickled"
    # Guard on the test itself: a full unpickle of this file does run the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_non_state_dict_pickle_is_a_checkpoint_error(tmp_path):
    """A safe-to-unpickle container that holds no tensors (torch's allow-list includes Counter)."""
    path = tmp_path / "counter.pth"
    torch.save(collections.Counter(a=1, b=2), path)
    with pytest.raises(scnet.CheckpointError, match="counter.pth"):
        scnet.create_model("scnet50", pretrained=path)


def test_corrupt_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(scnet.CheckpointError, match="truncated.pth") as info:
        scnet.create_model("scnet50", pretrained=path)
    assert "\n" not in str(info.value)


def test_other_architecture_is_a_one_line_error(scnet50_file):
    with pytest.raises(scnet.CheckpointError) as info:
        scnet.create_model("scnet101", pretrained=scnet50_file)
    message = str(info.value)
    assert "\n" not in message
    assert str(scnet50_file) in message


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "scnet50-dc6a7e87.pth"
    with pytest.raises(scnet.CheckpointError) as info:
        scnet.create_model("scnet50", pretrained=path)
    assert str(path) in str(info.value)
