"""``examples/<name>/``: real model folders (code only, no weights), and the package ships them.

The builders and the served answers are tested end to end in tests/integration/test_examples.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="torch_mme.tools.examples trains on scikit-learn's bundled data sets")

from torch_mme.tools import examples  # noqa: E402
from torch_mme.tools.packaging import ARTIFACT_SUFFIXES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FOLDERS = REPO / "examples"


def test_each_example_is_a_folder_with_its_code_and_build_script_and_no_weights():
    assert examples.examples_dir() == FOLDERS
    assert sorted(p.name for p in FOLDERS.iterdir() if p.is_dir()) == sorted(examples.EXAMPLES)
    for name in examples.EXAMPLES:
        folder = FOLDERS / name
        assert (folder / "code" / "inference.py").is_file() and (folder / "build.py").is_file(), name
        assert not [p for p in folder.rglob("*") if p.suffix in ARTIFACT_SUFFIXES or p.name == "model"], name
    assert (FOLDERS / examples.EMBEDDINGS_NAME / "code" / "requirements.txt").read_text().splitlines()[-1] == (
        examples.TRANSFORMERS_REQUIREMENT
    )


def test_the_two_table_models_carry_the_same_table_rows_helper():
    regressor = FOLDERS / examples.REGRESSOR_NAME / "code" / "table_rows.py"
    wine = FOLDERS / examples.SAFETENSORS_NAME / "code" / "table_rows.py"
    assert regressor.read_bytes() == wine.read_bytes(), "edit both copies (each model folder stands alone)"


def test_the_example_code_imports_nothing_of_torch_mme():
    for path in FOLDERS.glob("*/code/*.py"):
        text = path.read_text()
        assert "torch_mme" not in text and "import handler" not in text and "from handler" not in text, path


def test_a_builder_copies_the_code_folder_it_is_given(tmp_path: Path):
    code = tmp_path / "edited"
    shutil.copytree(FOLDERS / examples.REGRESSOR_NAME / "code", code)
    (code / "notes.txt").write_text("a user's edited copy\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "stale.pyc").write_bytes(b"x")

    model = examples.build_tabular_regressor(tmp_path / "model", code=code)

    copied = sorted(p.name for p in (model.model_dir / "code").iterdir())
    assert copied == ["inference.py", "notes.txt", "table_rows.py"]
    assert (model.model_dir / "model.pt").is_file()


def test_a_wheel_built_like_the_image_s_ships_every_example_folder(tmp_path: Path):
    """What container/Dockerfile copies and builds; the installed package finds the folders there."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md", "pyproject.toml"):
        shutil.copy(REPO / name, source / name)
    for name in ("handler", "torch_mme", "examples"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("torch_mme-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    wanted = {
        "torch_mme/tools/example_models/" + str(p.relative_to(FOLDERS))
        for p in FOLDERS.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert wanted and wanted <= shipped, sorted(wanted - shipped)
    assert "torch_mme/tools/hook_probe.py" in shipped
