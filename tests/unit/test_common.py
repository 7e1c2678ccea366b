"""The helpers every room shares."""

from __future__ import annotations

import pytest

from torch_mme.common import format_size, is_inside


@pytest.mark.parametrize(
    ("path", "root", "inside"),
    [
        ("/opt/ml/models", "/opt/ml/models", True),
        ("/opt/ml/models/a/model", "/opt/ml/models", True),
        ("/opt/ml/models/a/model", "/opt/ml/models/", True),
        ("/opt/ml/models-other/a", "/opt/ml/models", False),  # a sibling that shares the prefix
        ("/opt/ml", "/opt/ml/models", False),
        ("/opt/ml/models/../secrets", "/opt/ml/models", False),  # normalised before it is compared
        ("/anything", "/", True),
        ("models/a", "models", True),
        ("/opt/ml/models/a", "models", False),  # absolute against relative: never inside
    ],
)
def test_is_inside(path, root, inside):
    assert is_inside(path, root) is inside


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (4 * 10**6, "3.8 MiB"), (3 * 2**30 // 2, "1.5 GiB")],
)
def test_format_size(size, text):
    assert format_size(size) == text
