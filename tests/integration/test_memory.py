"""Memory-aware loading against the real MMS, with a low memory budget set on purpose.

Models declare their footprint in ``torch-mme.json``, so the budget decides
how many fit whatever the machine has: 2000 MB with 100 MB headroom holds
the server itself (~250 MB) and two 700 MB models, not three.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import descendants, write_script_model, write_torchscript
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

BUDGET = {"TORCH_MME_MEMORY_BUDGET_MB": "2000", "TORCH_MME_MEMORY_HEADROOM_MB": "100"}
SLOW = """
    import time
    import torch

    def model_fn(model_dir):
        return torch.nn.Identity()

    def predict_fn(data, model):
        time.sleep(float(data.flatten()[0]))
        return model(data)
"""


def declared_model(root: Path, name: str, memory_mb: int = 700, source: str | None = None) -> str:
    model_dir = root / name / "model"
    if source is None:
        write_torchscript(model_dir)
    else:
        write_script_model(model_dir, source)
    (model_dir / "torch-mme.json").write_text(json.dumps({"memory_mb": memory_mb}))
    return str(model_dir)


def registered(server: LocalServer, name: str) -> bool:
    return server.request("GET", f"/models/{name}")[0] == 200


def test_sagemaker_mode_answers_507_when_the_next_model_does_not_fit(tmp_path):
    dirs = {name: declared_model(tmp_path, name) for name in ("a", "b", "c")}
    with LocalServer(str(tmp_path), env=BUDGET) as server:
        assert server.load("a", dirs["a"])[0] == 200
        assert server.load("b", dirs["b"])[0] == 200
        started = time.monotonic()
        status, body = server.load("c", dirs["c"])
        assert status == 507 and "needs about 700 MB" in body["message"], body
        assert time.monotonic() - started < 1.0  # refused before a worker starts
        assert not registered(server, "c") and registered(server, "a") and registered(server, "b")
        # the platform unloads one; the retry of the same name succeeds (no zombie, no 409)
        assert server.unload("a") == 200
        assert server.load("c", dirs["c"])[0] == 200
        memory = json.loads(server.request("GET", "/models/c")[2])["memory"]
        # measured: the private memory of the model's processes (a tiny model forked from the template: ~10 MB)
        assert memory["estimatedBytes"] == 700 * 2**20 and memory["measuredUssBytes"] > 2 * 2**20


def test_standalone_mode_evicts_the_least_recently_invoked_model(tmp_path):
    dirs = {name: declared_model(tmp_path, name) for name in ("a", "b", "c")}
    with LocalServer(str(tmp_path), env={**BUDGET, "TORCH_MME_EVICTION": "lru"}) as server:
        assert server.load("a", dirs["a"])[0] == 200
        assert server.load("b", dirs["b"])[0] == 200
        assert server.invoke("a", b"[[1, 2, 3]]", "application/json")[0] == 200  # b is now the least recently used
        assert server.load("c", dirs["c"])[0] == 200
        assert registered(server, "a") and registered(server, "c") and not registered(server, "b")
        assert processes.model_processes(server.process.pid, "b") == []


def test_standalone_mode_never_evicts_a_model_serving_a_request(tmp_path):
    dirs = {
        "slow": declared_model(tmp_path, "slow", source=SLOW),
        "b": declared_model(tmp_path, "b"),
        "c": declared_model(tmp_path, "c"),
    }
    with LocalServer(str(tmp_path), env={**BUDGET, "TORCH_MME_EVICTION": "lru"}) as server:
        assert server.load("slow", dirs["slow"])[0] == 200
        assert server.load("b", dirs["b"])[0] == 200
        answers = []
        request = threading.Thread(target=lambda: answers.append(server.invoke("slow", b"[3.0]", "application/json")))
        request.start()
        time.sleep(0.5)
        assert server.invoke("b", b"[[1, 2, 3]]", "application/json")[0] == 200  # slow is older but busy
        assert server.load("c", dirs["c"])[0] == 200
        request.join(30)
        assert answers and answers[0][0] == 200 and json.loads(answers[0][2]) == [3.0]
        assert registered(server, "slow") and not registered(server, "b")


def test_standalone_mode_answers_507_when_nothing_can_be_unloaded(tmp_path):
    big = declared_model(tmp_path, "big", memory_mb=5000)
    small = declared_model(tmp_path, "small")
    with LocalServer(str(tmp_path), env={**BUDGET, "TORCH_MME_EVICTION": "lru"}) as server:
        assert server.load("small", small)[0] == 200
        status, body = server.load("big", big)
        assert status == 507 and "5000 MB" in body["message"]
        assert not registered(server, "small")  # it was unloaded trying to make room
        assert not registered(server, "big")


def test_torch_allocator_failure_at_load_is_507_and_the_name_stays_free(tmp_path):
    source = "import torch\n\ndef model_fn(model_dir):\n    return torch.empty(2**58, dtype=torch.uint8)\n"
    write_script_model(tmp_path / "huge" / "model", source)
    with LocalServer(str(tmp_path)) as server:
        status, body = server.load("huge", str(tmp_path / "huge" / "model"))
        assert status == 507 and "out of memory" in body["message"], body
        assert not registered(server, "huge")
        write_torchscript(tmp_path / "huge" / "model")
        (tmp_path / "huge" / "model" / "code" / "inference.py").unlink()
        assert server.load("huge", str(tmp_path / "huge" / "model"))[0] == 200


def tree_uss(pid: int) -> int:
    return processes.uss(processes.tree(pid))


@pytest.mark.parametrize("cycles", [12])
def test_unload_gives_memory_back_over_load_unload_cycles(tmp_path, cycles):
    for name in ("x", "y"):
        write_torchscript(tmp_path / name / "model")
    with LocalServer(str(tmp_path)) as server:
        run_dir_sockets = None
        baseline = None
        for cycle in range(cycles):
            for name in ("x", "y"):
                assert server.load(name, str(tmp_path / name / "model"))[0] == 200
                assert server.invoke(name, b"[[1, 2, 3]]", "application/json")[0] == 200
            for name in ("x", "y"):
                assert server.unload(name) == 200
                assert processes.model_processes(server.process.pid, name) == []  # gone when DELETE returns
            if cycle == 1:  # after warm-up (Java's JIT and heap settle in the first cycles)
                baseline = tree_uss(server.process.pid)
                run_dir_sockets = len(_unix_sockets(server))
                process_count = len(descendants(server.process.pid))
        final = tree_uss(server.process.pid)
        assert final <= baseline * 1.05, (baseline / 2**20, final / 2**20)
        assert len(_unix_sockets(server)) <= run_dir_sockets
        assert len(descendants(server.process.pid)) <= process_count


def _unix_sockets(server: LocalServer) -> list:
    connections = []
    for process in descendants(server.process.pid):
        with contextlib.suppress(psutil.Error):
            connections += process.net_connections(kind="unix")
    return connections


def test_out_of_memory_during_a_request_is_507_and_the_model_keeps_serving(tmp_path):
    source = """
        import torch

        def model_fn(model_dir):
            return torch.nn.Identity()

        def predict_fn(data, model):
            if float(data.flatten()[0]) < 0:
                return torch.empty(2**58, dtype=torch.uint8)
            return model(data)
    """
    write_script_model(tmp_path / "spiky" / "model", source)
    with LocalServer(str(tmp_path)) as server:
        assert server.load("spiky", str(tmp_path / "spiky" / "model"))[0] == 200
        status, _, body = server.invoke("spiky", b"[-1.0]", "application/json")
        assert status == 507 and json.loads(body)["type"] == "OutOfMemory"
        status, _, body = server.invoke("spiky", b"[2.0]", "application/json")
        assert status == 200 and json.loads(body) == [2.0]


def test_standalone_mode_retries_a_load_that_ran_out_of_memory_after_evicting(tmp_path):
    # the estimate says it fits, the load itself runs out of memory until another model is gone
    source = """
        import os
        import torch

        def model_fn(model_dir):
            if os.path.exists(os.path.join(model_dir, "..", "..", "first-try-done")):
                return torch.nn.Identity()
            open(os.path.join(model_dir, "..", "..", "first-try-done"), "w").close()
            raise MemoryError("the estimate was low")
    """
    write_script_model(tmp_path / "tight" / "model", source)
    other = declared_model(tmp_path, "other")
    with LocalServer(str(tmp_path), env={**BUDGET, "TORCH_MME_EVICTION": "lru"}) as server:
        assert server.load("other", other)[0] == 200
        assert server.load("tight", str(tmp_path / "tight" / "model"))[0] == 200
        assert registered(server, "tight") and not registered(server, "other")


def test_unload_waits_for_requests_in_flight_and_refuses_new_ones(tmp_path):
    write_script_model(tmp_path / "slow" / "model", SLOW)
    with LocalServer(str(tmp_path)) as server:
        assert server.load("slow", str(tmp_path / "slow" / "model"))[0] == 200
        answers = []
        request = threading.Thread(target=lambda: answers.append(server.invoke("slow", b"[2.0]", "application/json")))
        request.start()
        time.sleep(0.5)
        unloaded = []
        unload = threading.Thread(target=lambda: unloaded.append(server.unload("slow")))
        unload.start()
        time.sleep(0.3)
        status, _, body = server.invoke("slow", b"[0.0]", "application/json")  # while the unload waits
        assert status == 404 and "being unloaded" in json.loads(body)["message"]
        request.join(30)
        unload.join(30)
        assert answers and answers[0][0] == 200 and json.loads(answers[0][2]) == [2.0]  # answered, not "Worker died"
        assert unloaded == [200]
        assert not registered(server, "slow")


def test_a_delete_racing_a_load_of_the_same_name_never_breaks_that_load(tmp_path):
    """Found by the soak: a DELETE of a model not loaded (yet) went to MMS late and unloaded the LoadModel of
    that name that had started meanwhile. Now each either waits for the other or answers 409/404."""
    write_torchscript(tmp_path / "raced" / "model")
    with LocalServer(str(tmp_path)) as server:
        outcomes: dict[tuple[int, int], int] = {}
        for _ in range(25):
            results: dict[str, int] = {}
            delete = threading.Thread(target=lambda got=results: got.__setitem__("delete", server.unload("raced")))
            delete.start()
            loaded = server.load("raced", str(tmp_path / "raced" / "model"))[0]
            delete.join(30)
            outcomes[(loaded, results["delete"])] = outcomes.get((loaded, results["delete"]), 0) + 1
            assert loaded in (200, 409), loaded
            assert results["delete"] in (200, 404), results
            if loaded == 200 and registered(server, "raced"):
                assert server.invoke("raced", b"[[1, 2, 3]]", "application/json")[0] == 200
            server.unload("raced")
        assert not registered(server, "raced"), outcomes
