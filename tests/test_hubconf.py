"""torch.hub entry points of the repository (hubconf.py at its root)."""

from __future__ import annotations

import importlib.util

import torch

from scnet.models import SC_MODELS

from .utils import REPO_ROOT


def test_hub_entry_points_are_the_sc_models():
    # torch.hub.list only reads GitHub repos; this is its rule for a hubconf's entries, applied locally.
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted(SC_MODELS)


def test_hub_load_local(scnet50_file, scnet50_state_dict):
    model = torch.hub.load(str(REPO_ROOT), "scnet50", source="local", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 3)
    loaded = torch.hub.load(str(REPO_ROOT), "scnet50", source="local", pretrained=str(scnet50_file))
    assert torch.equal(loaded.layer4[2].scconv.k2[1].weight, scnet50_state_dict["layer4.2.scconv.k2.1.weight"])
