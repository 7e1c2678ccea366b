"""``torch-mme package``: validation in a child process, reproducible archives, several models, local upload.

The inference.py files here import nothing heavy at module level, so each
validation's child process starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from torch_mme.endpoint.archive import extract
from torch_mme.tools import packaging
from torch_mme.tools.packaging import InvalidModel, pack, validate

MODEL_FN = """
    import os


    def model_fn(model_dir):
        import torch

        return torch.load(os.path.join(model_dir, "model.pth"))
"""


def model_dir(root: Path, name: str, files: dict[str, str | bytes]) -> Path:
    """A model directory holding ``files`` (text is dedented)."""
    path = root / name
    path.mkdir(parents=True)
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content).lstrip())
    return path


def torchscript(root: Path, name: str = "housing") -> Path:
    return model_dir(root, name, {"model.pt": b"PK\x03\x04 not really TorchScript", "code/requirements.txt": "numpy\n"})


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torch-mme")
    packaging.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["package", *argv])


def test_a_torchscript_directory_validates_and_packs(tmp_path: Path):
    src = torchscript(tmp_path)

    assert validate(str(src)) == []
    size = pack(str(src), str(tmp_path / "out" / "housing.tar.gz"))

    archive = tmp_path / "out" / "housing.tar.gz"
    assert size == archive.stat().st_size
    assert members(archive) == ["code", "code/requirements.txt", "model.pt"]
    assert os.listdir(tmp_path / "out") == ["housing.tar.gz"]  # no partial file left


def test_pack_is_reproducible_relative_sorted_and_skips_bytecode(tmp_path: Path):
    src = model_dir(
        tmp_path,
        "m",
        {
            "model.pt": b"weights",
            "code/inference.py": "def predict_fn(data, model):\n    return data\n",
            "code/helpers/z.py": "",
            "code/helpers/a.py": "",
            "code/__pycache__/inference.cpython-311.pyc": b"\x00",
            "code/stale.pyc": b"\x00",
            "torch-mme.json": "{}",
            "a-b.txt": "",
        },
    )
    (src / "code" / "inference.py").chmod(0o700)
    first, second = tmp_path / "1.tar.gz", tmp_path / "2.tar.gz"

    pack(str(src), str(first))
    os.utime(src / "model.pt", (1, 1))  # times and owners are not in the archive
    pack(str(src), str(second))

    assert first.read_bytes() == second.read_bytes()
    names = members(first)
    assert names == sorted(names)
    assert names == [
        "a-b.txt",
        "code",
        "code/helpers",
        "code/helpers/a.py",
        "code/helpers/z.py",
        "code/inference.py",
        "model.pt",
        "torch-mme.json",
    ]
    with tarfile.open(first) as tar:
        for member in tar:
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert tar.getmember("code/inference.py").mode == 0o755
        assert tar.getmember("model.pt").mode == 0o644


def test_a_packed_archive_extracts_to_the_same_directory(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pth": b"state", "code/inference.py": MODEL_FN})
    (src / "alias.pth").symlink_to("model.pth")
    (src / "code" / "absolute.pth").symlink_to(src / "model.pth")  # made relative: endpoints refuse absolute links
    (src / "detour.pth").symlink_to("../m/model.pth")  # inside, but endpoints refuse a target stepping out of it
    pack(str(src), str(tmp_path / "m.tar.gz"))

    extract(str(tmp_path / "m.tar.gz"), str(tmp_path / "x"))

    assert (tmp_path / "x" / "code" / "inference.py").read_text() == (src / "code" / "inference.py").read_text()
    assert os.readlink(tmp_path / "x" / "alias.pth") == "model.pth"
    assert os.readlink(tmp_path / "x" / "code" / "absolute.pth") == "../model.pth"
    assert os.readlink(tmp_path / "x" / "detour.pth") == "model.pth"


def test_a_state_dict_with_model_fn_validates(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pth": b"state", "code/inference.py": MODEL_FN})

    assert validate(str(src)) == []


def test_model_fn_without_any_artifact_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model_dir(tmp_path, "m", {"code/inference.py": "def model_fn(model_dir):\n    return None\n"})
    monkeypatch.chdir(tmp_path)

    assert validate("m") == []  # a relative path: the child process runs in the model directory


@pytest.mark.parametrize("artifact", ["model.pt2", "weights.safetensors"])
def test_pt2_and_safetensors_count_as_artifacts(tmp_path: Path, artifact: str):
    assert validate(str(model_dir(tmp_path, "m", {artifact: b"x"}))) == []


def test_the_user_code_does_not_run_in_this_process(tmp_path: Path):
    src = model_dir(
        tmp_path,
        "m",
        {
            "model.pt": b"x",
            "code/helper.py": "import os\nWHERE = os.getcwd()\n",
            "code/inference.py": """
                import sys

                import helper

                print("chatty at import", end="")
                open("imported-from", "w").write(helper.WHERE)


                def predict_fn(data, model):
                    return data
            """,
        },
    )

    assert validate(str(src)) == []
    assert "helper" not in sys.modules
    assert (src / "imported-from").read_text() == str(src)  # cwd was the model dir
    assert not (src / "code" / "__pycache__").exists()


def test_a_syntax_error_is_a_problem(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pt": b"x", "code/inference.py": "def model_fn(model_dir)\n    pass\n"})

    (problem,) = validate(str(src))

    assert "code/inference.py failed to import" in problem and "SyntaxError" in problem


def test_an_import_error_is_a_problem(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pt": b"x", "code/inference.py": "import not_installed_anywhere\n"})

    (problem,) = validate(str(src))

    assert "ModuleNotFoundError" in problem and "not_installed_anywhere" in problem


def test_the_script_imports_its_helpers_but_not_the_probes_neighbours(tmp_path: Path):
    # the probe runs as a script from torch_mme/tools/: that folder must not stand in for the user's imports
    src = model_dir(
        tmp_path,
        "m",
        {
            "model.pt": b"x",
            "code/helper.py": "VALUE = 1\n",
            "code/inference.py": "import helper\nimport local_server\n\ndef input_fn(body, content_type):\n    pass\n",
        },
    )

    (problem,) = validate(str(src))

    assert "ModuleNotFoundError" in problem and "local_server" in problem, problem
    (src / "code" / "inference.py").write_text("import helper\n\ndef input_fn(body, content_type):\n    pass\n")
    assert validate(str(src)) == []


def test_an_import_that_exits_the_process_is_a_problem(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pt": b"x", "code/inference.py": "import os\nos._exit(3)\n"})

    (problem,) = validate(str(src))

    assert "exit status 3" in problem


def test_an_import_that_hangs_is_a_problem(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pt": b"x", "code/inference.py": "import time\ntime.sleep(30)\n"})

    (problem,) = validate(str(src), timeout=0.5)

    assert "did not finish importing within 0.5 s" in problem


def test_a_script_without_hooks_is_a_problem(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"model.pt": b"x", "code/inference.py": "def helper():\n    pass\nmodel_fn = 3\n"})

    assert validate(str(src)) == [
        "code/inference.py defines none of the hooks "
        "pre_model_fn, model_fn, model_warmup_fn, input_fn, predict_fn, output_fn, transform_fn"
    ]


def test_an_empty_directory_is_a_problem(tmp_path: Path):
    (tmp_path / "m").mkdir()

    (problem,) = validate(str(tmp_path / "m"))

    assert problem.startswith("no model artifact and no model_fn")


def test_weights_without_model_fn_and_no_artifact_is_a_problem(tmp_path: Path):
    src = model_dir(tmp_path, "m", {"code/inference.py": "def predict_fn(data, model):\n    return data\n"})

    (problem,) = validate(str(src))

    assert problem.startswith("no model artifact and no model_fn")


def test_transform_fn_with_input_fn_is_a_problem(tmp_path: Path):
    src = model_dir(
        tmp_path,
        "m",
        {
            "model.pt": b"x",
            "code/inference.py": """
                def input_fn(body, content_type):
                    return body


                def transform_fn(model, body, content_type, accept):
                    return body
            """,
        },
    )

    (problem,) = validate(str(src))

    assert "transform_fn and input_fn" in problem


def test_pack_validates_first(tmp_path: Path):
    (tmp_path / "m").mkdir()

    with pytest.raises(InvalidModel, match="no model artifact"):
        pack(str(tmp_path / "m"), str(tmp_path / "m.tar.gz"))
    assert not (tmp_path / "m.tar.gz").exists()


def test_pack_refuses_a_symlink_out_of_the_directory(tmp_path: Path):
    (tmp_path / "secret").write_text("host file")
    src = torchscript(tmp_path)
    (src / "code" / "leak").symlink_to("../../secret")

    with pytest.raises(InvalidModel, match="code/leak: symlink to '../../secret' points outside"):
        pack(str(src), str(tmp_path / "m.tar.gz"), check=False)
    assert sorted(os.listdir(tmp_path)) == ["housing", "secret"]


def test_pack_leaves_out_its_own_output_inside_the_directory(tmp_path: Path):
    src = torchscript(tmp_path)
    (src / "model.tar.gz.partial").write_bytes(b"stale")

    pack(str(src), str(src / "model.tar.gz"))

    assert "model.tar.gz" not in members(src / "model.tar.gz")


def test_run_packs_several_models_into_a_folder_and_uploads_them(tmp_path: Path, capsys: pytest.CaptureFixture):
    sources = [torchscript(tmp_path / "src", name) for name in ("housing", "iris", "mnist")]
    out, bucket = tmp_path / "out", tmp_path / "bucket" / "prefix"

    code = packaging.run(parse([*map(str, sources), "-o", str(out), "--upload", str(bucket)]))

    assert code == 0
    expected = ["housing.tar.gz", "iris.tar.gz", "mnist.tar.gz"]
    assert sorted(os.listdir(out)) == expected
    assert sorted(os.listdir(bucket)) == expected
    for name in expected:
        assert (bucket / name).read_bytes() == (out / name).read_bytes()
    lines = capsys.readouterr().err.splitlines()  # not a terminal: one line per model and step
    assert lines[0].startswith("[1/3] packed housing.tar.gz (") and lines[0].endswith(" B)")
    assert lines[3] == f"[1/3] uploaded housing.tar.gz to {bucket / 'housing.tar.gz'}"
    assert len(lines) == 6


def test_run_with_one_model_writes_out_as_the_archive(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = torchscript(tmp_path)

    assert packaging.run(parse([str(src), "-o", str(tmp_path / "a" / "model.tar.gz")])) == 0

    assert members(tmp_path / "a" / "model.tar.gz") == ["code", "code/requirements.txt", "model.pt"]
    assert capsys.readouterr().err.startswith("packed model.tar.gz (")


def test_progress_is_rewritten_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = packaging._Progress(2, stream)
    progress.step(1, "packed a.tar.gz (1.0 MB)")
    progress.step(2, "packed b.tar.gz (2.0 MB)")
    progress.done()

    assert stream.getvalue() == "\r\x1b[K[1/2] packed a.tar.gz (1.0 MB)\r\x1b[K[2/2] packed b.tar.gz (2.0 MB)\n"


def test_run_refuses_invalid_models_before_packing_any(tmp_path: Path, capsys: pytest.CaptureFixture):
    good = torchscript(tmp_path)
    bad = model_dir(tmp_path, "broken", {"model.pt": b"x", "code/inference.py": "def model_fn(:\n"})
    out = tmp_path / "out"

    assert packaging.run(parse([str(good), str(bad), "-o", str(out)])) == 1

    err = capsys.readouterr().err
    assert f"{bad}: code/inference.py failed to import: SyntaxError" in err
    assert str(good) not in err
    assert not out.exists()


def test_run_without_validation_still_refuses_a_symlink_out(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = model_dir(tmp_path, "m", {"code/inference.py": "syntax error here"})
    (src / "leak").symlink_to("/etc")

    assert packaging.run(parse([str(src), "-o", str(tmp_path / "m.tar.gz"), "--no-validate"])) == 1
    assert "leak: symlink to '/etc' points outside the model directory" in capsys.readouterr().err

    (src / "leak").unlink()
    assert packaging.run(parse([str(src), "-o", str(tmp_path / "m.tar.gz"), "--no-validate"])) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/missing", "-o", "{tmp}/x.tar.gz"], "missing is not a directory"),
        (["{tmp}/a/housing", "{tmp}/b/housing", "-o", "{tmp}/out"], "same archive: housing.tar.gz"),
        (["{tmp}/a/housing", "{tmp}/b/iris", "-o", "{tmp}/file"], "OUT must be a folder"),
        (["{tmp}/a/housing", "-o", "{tmp}/x.tar.gz", "--upload", "gs://bucket"], "local folder or s3://"),
        (["{tmp}/a/housing", "-o", "{tmp}/x.tar.gz", "--upload", "s3://"], "no bucket"),
        (["{tmp}/a/housing", "-o", "{tmp}/x.tar.gz", "--upload", "{tmp}/file"], "is a file"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str):
    for parent, name in (("a", "housing"), ("b", "housing"), ("b", "iris")):
        torchscript(tmp_path / parent, name)
    (tmp_path / "file").write_text("")

    assert packaging.run(parse([arg.format(tmp=tmp_path) for arg in argv])) == 2

    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.tar.gz").exists() and not (tmp_path / "out").exists()


def test_the_parser_needs_a_source_and_an_output_unless_checking(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as caught:
        parse([])
    assert caught.value.code == 2
    assert packaging.run(parse([str(torchscript(tmp_path))])) == 2
    assert "-o/--output is required" in capsys.readouterr().err


def test_check_reports_differences_and_packs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture):
    """``--check`` on an existing SageMaker PyTorch folder: what would behave differently here."""
    src = model_dir(
        tmp_path,
        "mnist",
        {"torch_model.pth": b"\x80\x02 a legacy pickle", "code/mnist_1d.py": MODEL_FN, "code/requirements.txt": "x\n"},
    )
    assert packaging.run(parse(["--check", str(src)])) == 0
    out = capsys.readouterr().out
    assert "code/ holds mnist_1d.py but no inference.py: set SAGEMAKER_PROGRAM" in out
    assert "torch_model.pth is not TorchScript" in out
    assert "code/requirements.txt is installed" in out
    assert list(tmp_path.iterdir()) == [src]

    assert packaging.run(parse(["--check", "--program", "mnist_1d.py", str(src)])) == 0
    out = capsys.readouterr().out
    assert "SAGEMAKER_PROGRAM" not in out and "not TorchScript" not in out  # its model_fn loads the weights
    assert "eval() once at load" not in out  # no predict_fn of its own


def test_check_fails_what_would_not_load(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = model_dir(tmp_path, "two", {"a.pt": b"PK\x03\x04", "b.pth": b"PK\x03\x04"})
    assert packaging.run(parse(["--check", str(src)])) == 1
    assert "FAILS: several .pt/.pth files (a.pt, b.pth)" in capsys.readouterr().out
    assert validate(str(src)) == [packaging._ambiguous_artifacts(str(src), [])[0]]


def test_check_of_a_plain_torchscript_folder_names_the_default_codec_differences(tmp_path: Path, capsys):
    import torch

    src = model_dir(tmp_path, "ts", {})
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(src / "traced.pt"))
    assert packaging.run(parse(["--check", str(src)])) == 0
    out = capsys.readouterr().out
    assert "not TorchScript" not in out
    assert "a one-line text/csv body is a 1 x N tensor" in out and "keep the tensor's dtype" in out


def test_upload_to_s3_uses_a_plain_boto3_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Only the call shape: the real upload is tested against moto elsewhere."""
    calls: list[tuple] = []

    class Client:
        def upload_file(self, filename: str, bucket: str, key: str) -> None:
            calls.append((os.path.basename(filename), bucket, key))

    fake = type(sys)("boto3")
    fake.client = lambda service: calls.append(("client", service)) or Client()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boto3", fake)
    sources = [torchscript(tmp_path / "src", name) for name in ("housing", "iris")]

    assert packaging.run(parse([*map(str, sources), "-o", str(tmp_path / "out"), "--upload", "s3://b/models/"])) == 0

    assert calls == [
        ("client", "s3"),
        ("housing.tar.gz", "b", "models/housing.tar.gz"),
        ("iris.tar.gz", "b", "models/iris.tar.gz"),
    ]
