"""Run by ``packaging`` as a script in a child process: import a model's ``code/inference.py`` and report its hooks.

``python -B hook_probe.py CODE_DIR SCRIPT MARKER HOOKS_JSON`` imports ``SCRIPT`` as the handler does
(module ``inference``, ``CODE_DIR`` first on ``sys.path``) and writes one line, ``MARKER`` then JSON:
``{"hooks": [the names of HOOKS_JSON the script defines]}`` or ``{"error": "Type: last line"}``. The
user's code, and whatever it imports at module level, runs in this process only. Standard library
only: nothing of torch-mme is imported here, so the script sees the interpreter as the worker would.
"""

import importlib.util
import json
import os
import sys


def report(marker: str, **result: object) -> None:
    sys.stdout.write("\n" + marker + json.dumps(result) + "\n")
    sys.stdout.flush()


def main() -> None:
    code_dir, path, marker, hooks = sys.argv[1:5]
    here = os.path.dirname(os.path.abspath(__file__))  # sys.path[0] when run as a script: not the user's
    sys.path[:] = [code_dir] + [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != here]
    try:
        spec = importlib.util.spec_from_file_location("inference", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["inference"] = module
        spec.loader.exec_module(module)
    except BaseException as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        report(marker, error=type(exc).__name__ + (": " + lines[-1] if lines else ""))
    else:
        report(marker, hooks=[name for name in json.loads(hooks) if callable(getattr(module, name, None))])


if __name__ == "__main__":
    main()
