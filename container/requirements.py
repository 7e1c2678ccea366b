"""Print the image's Python requirements: ``install_requires`` of setup.py, one per line.

``python container/requirements.py [setup.py]``. Read with ``ast``, without running setup.py, so
that it needs nothing beside setup.py itself: the image's dependency layer is built from this list
and is rebuilt only when the list changes, not when code, README.md or the version does.
docker-build.sh uses it on the host to fill and check a wheelhouse.
"""

from __future__ import annotations

import ast
import sys


def install_requires(setup_py: str) -> list[str]:
    """The literal list given as ``setup(install_requires=[...])``."""
    with open(setup_py, encoding="utf-8") as f:
        tree = ast.parse(f.read(), setup_py)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "install_requires":
                    return list(ast.literal_eval(keyword.value))
    raise SystemExit(f"{setup_py}: no literal install_requires=[...] in a setup(...) call")


if __name__ == "__main__":
    print("\n".join(install_requires(sys.argv[1] if len(sys.argv) > 1 else "setup.py")))
