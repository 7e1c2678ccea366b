"""Settings: the one reader of the environment."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from torch_mme import settings
from torch_mme.settings import Settings, readme_table, shown_default


def test_from_env_of_an_empty_environment_is_the_defaults():
    assert Settings.from_env({}) == Settings()
    defaults = Settings.from_env({})
    assert defaults.models_root == "/opt/ml/models"
    assert defaults.timeout_s == 60
    assert defaults.port == 8080
    assert defaults.allow_unsafe_pickle is False
    assert defaults.default_accept == "application/json"


def test_from_env_reads_os_environ_when_no_mapping_is_given(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9090")
    monkeypatch.setenv("TORCH_MME_MODEL_DIR", "/srv/models")
    settings = Settings.from_env()
    assert settings.port == 9090
    assert settings.models_root == "/srv/models"


def test_sagemaker_base_dir_gives_the_models_root():
    assert Settings.from_env({"SAGEMAKER_BASE_DIR": "/mnt/sm"}).models_root == "/mnt/sm/models"


def test_torch_mme_model_dir_wins_over_sagemaker_base_dir():
    env = {"SAGEMAKER_BASE_DIR": "/mnt/sm", "TORCH_MME_MODEL_DIR": "/srv/models"}
    assert Settings.from_env(env).models_root == "/srv/models"


@pytest.mark.parametrize(
    ("env", "seconds"),
    [
        (
            {
                "TORCH_MME_TIMEOUT_SECONDS": "7",
                "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "8",
                "SAGEMAKER_MODEL_SERVER_TIMEOUT": "9",
            },
            7,
        ),
        ({"SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "8", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "9"}, 8),
        ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "9"}, 9),
        ({"TORCH_MME_TIMEOUT_SECONDS": "", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "9"}, 9),
        ({}, 60),
    ],
)
def test_timeout_precedence_and_unit_is_seconds(env, seconds):
    assert Settings.from_env(env).timeout_s == seconds


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on"])
def test_allow_unsafe_pickle_true_values(value):
    assert Settings.from_env({"TORCH_MME_ALLOW_UNSAFE_PICKLE": value}).allow_unsafe_pickle is True


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_allow_unsafe_pickle_false_values(value):
    assert Settings.from_env({"TORCH_MME_ALLOW_UNSAFE_PICKLE": value}).allow_unsafe_pickle is False


def test_empty_numeric_variables_fall_back_to_defaults():
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "", "SAGEMAKER_MAX_PAYLOAD_IN_MB": ""}
    settings = Settings.from_env(env)
    assert settings.workers_per_model == 1
    assert settings.max_request_mb == 6


def test_log_level_is_upper_cased():
    assert Settings.from_env({"TORCH_MME_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_to_env_round_trip_of_defaults():
    settings = Settings()
    assert Settings.from_env(settings.to_env()) == settings


def test_to_env_round_trip_of_every_field_changed():
    settings = Settings(
        host="0.0.0.0",
        port=9000,
        models_root="/srv/models",
        workers_per_model=3,
        timeout_s=17,
        jvm_heap="2g",
        vmargs="-XX:+UseG1GC",
        max_request_mb=20,
        max_decoded_ratio=3,
        default_accept="text/csv",
        allow_unsafe_pickle=True,
        run_dir="/tmp/run",
        log_level="DEBUG",
        memory_budget_mb=2000,
        memory_headroom_mb=64,
        worker_overhead_mb=40,
        eviction="lru",
        fork_server=False,
        install_requirements=False,
        deps_dir="/srv/deps",
        wheelhouse="/srv/wheels",
        pip_index="off",
        pip_timeout_s=30,
        header_timeout_s=2.5,
        body_timeout_s=7.0,
        idle_timeout_s=9.0,
        max_connections=50,
        inflight_mb=64,
        max_queued=8,
        queue_timeout_s=1.5,
        metrics=False,
        program="mnist_1d.py",
    )
    # every field differs from its default, so the round trip covers them all
    assert all(getattr(settings, f.name) != f.default for f in dataclasses.fields(Settings))
    assert Settings.from_env(settings.to_env()) == settings


def test_to_env_values_are_strings():
    assert all(isinstance(v, str) for v in Settings(allow_unsafe_pickle=True).to_env().values())


def test_with_overrides_ignores_none_and_unknown_names():
    base = Settings(port=9000)
    changed = base.with_overrides(port=None, timeout_s=5, not_a_setting="x")
    assert changed.port == 9000
    assert changed.timeout_s == 5
    assert base.timeout_s == 60  # the original is untouched


def test_with_overrides_keeps_false_and_zero():
    changed = Settings(allow_unsafe_pickle=True).with_overrides(allow_unsafe_pickle=False, workers_per_model=0)
    assert changed.allow_unsafe_pickle is False
    assert changed.workers_per_model == 0


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_an_unknown_eviction_mode_is_refused():
    import pytest

    with pytest.raises(ValueError, match="TORCH_MME_EVICTION"):
        Settings.from_env({"TORCH_MME_EVICTION": "random"})


def test_the_readme_lists_every_setting_with_its_default():
    """The README's table is ``readme_table()`` (regenerate it with ``python -m torch_mme.settings``)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    begin, end = "<!-- settings table: begin -->\n", "<!-- settings table: end -->"
    table = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert table == readme_table()
    for f in dataclasses.fields(Settings):  # the table is built from the fields: each is in it, with its default
        assert f"| {', '.join(f'`{n}`' for n in f.metadata['env'])} |" in table
        assert f"`{shown_default(f)}`" in table


def test_every_setting_has_a_variable_and_a_description():
    names = [name for f in dataclasses.fields(Settings) for name in f.metadata["env"]]
    assert len(names) == len(set(names))  # each variable is named once
    assert all(f.metadata["doc"] for f in dataclasses.fields(Settings))


def test_serve_flags_come_from_the_settings():
    from torch_mme import cli

    parser = argparse.ArgumentParser()
    cli._serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--timeout", "7", "--evict", "lru", "--allow-unsafe-pickle"])
    changed = Settings().with_overrides(**{k: v for k, v in vars(args).items() if k != "command"})
    assert (changed.timeout_s, changed.eviction, changed.allow_unsafe_pickle) == (7, "lru", True)
    flagged = [f for f in dataclasses.fields(Settings) if f.metadata["flag"]]
    help_text = parser._subparsers._group_actions[0].choices["serve"].format_help()
    for f in flagged:
        assert f.metadata["flag"] in help_text and f.metadata["env"][0] in help_text


def test_the_launcher_reads_the_template_socket_settings_names():
    from torch_mme.runtime import launcher

    assert launcher.SOCKET_ENV == settings.TEMPLATE_SOCKET


ROOT = Path(__file__).resolve().parents[2]
NOT_YET = {
    "torch_mme/runtime/launcher.py": "forwards its whole environment to the template: it imports built-ins only",
}
"""Modules that read the environment themselves, and why."""


def _environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read ``os.environ`` (or call ``os.getenv``): anything but writing to it."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getenv":
            lines.append(node.lineno)
        if not (isinstance(node, ast.Attribute) and node.attr == "environ"):
            continue
        parent = parents.get(node)
        writes = (isinstance(parent, ast.Attribute) and parent.attr in ("update", "clear", "setdefault", "pop")) or (
            isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)
        )
        if not writes:
            lines.append(node.lineno)
    return lines


def test_only_settings_reads_the_environment():
    sources = [p for folder in ("torch_mme", "handler", "container") for p in sorted((ROOT / folder).rglob("*.py"))]
    reads = {
        str(p.relative_to(ROOT)): lines for p in sources if (lines := _environment_reads(p)) and p.name != "settings.py"
    }
    assert {k: v for k, v in reads.items() if k not in NOT_YET} == {}
    assert set(NOT_YET) <= set(reads), "a module no longer reads the environment: drop it from NOT_YET"
