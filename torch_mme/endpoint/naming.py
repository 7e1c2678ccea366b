"""The container-side model name for a TargetModel.

SageMaker derives an opaque name from the TargetModel; here it is readable
and unique: ``'team/housing/v2.tar.gz'`` -> ``'team-housing-v2-1f3a9c0e2b'``.
The name is used for the LoadModel ``model_name``, the folder under the
models root, and metrics labels.
"""

from __future__ import annotations

import hashlib
import re

SUFFIXES = (".tar.gz", ".tgz", ".tar")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_name(target: str) -> str:
    stem = target
    for suffix in SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    slug = _UNSAFE.sub("-", stem).strip("-._")[:200] or "model"
    digest = hashlib.sha1(target.encode()).hexdigest()[:10]
    return f"{slug}-{digest}"
