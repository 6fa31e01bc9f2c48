"""The committed reference files (tests/reference) are byte-for-byte copies of the team's cited originals."""

from __future__ import annotations

import pytest

from ..utils import REFERENCE_DIR, REFERENCE_FILES, SHARED_REFERENCE_DIR


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_reference_copy_is_byte_identical_to_the_shared_original(name):
    original = SHARED_REFERENCE_DIR / name
    if not SHARED_REFERENCE_DIR.is_dir():
        pytest.skip(f"no shared reference folder at {SHARED_REFERENCE_DIR.resolve()} to compare with")
    assert original.is_file(), f"{original} is gone from the shared folder"
    copy = REFERENCE_DIR / name
    assert copy.read_bytes() == original.read_bytes(), f"{copy} differs from {original}"
