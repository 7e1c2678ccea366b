"""bench/endpoint_scale.py reads hits and models held from the endpoint's log: the Router's real log lines."""

from __future__ import annotations

import asyncio
import logging

from bench import endpoint_scale
from tests.unit.test_router import Serving, routed
from torch_mme.endpoint.naming import model_name


def test_the_log_parser_follows_the_routers_hits_loads_and_unloads(tmp_path):
    serving = Serving(capacity=2)
    router, _ = routed(tmp_path, serving, "a.tar.gz", "b.tar.gz", "c.tar.gz")
    stream = ["a.tar.gz", "a.tar.gz", "b.tar.gz", "c.tar.gz", "a.tar.gz", "c.tar.gz"]
    log_path = tmp_path / "endpoint.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s - %(message)s"))  # the CLI's
    endpoint_logger = logging.getLogger("torch_mme.endpoint")
    endpoint_logger.addHandler(handler)
    level = endpoint_logger.level
    endpoint_logger.setLevel(logging.INFO)
    try:

        async def run() -> None:
            for target in stream:
                await router.invoke(target, b"x", {})

        asyncio.run(run())
    finally:
        endpoint_logger.removeHandler(handler)
        endpoint_logger.setLevel(level)
        handler.close()
    logged = endpoint_scale.endpoint_log(log_path)
    assert [r["target"] for r in logged] == stream
    assert [r["hit"] for r in logged] == [False, True, False, False, False, True]
    assert [r["held"] for r in logged] == [1, 1, 2, 2, 2, 2]
    assert [r["hit"] for r in logged] == endpoint_scale.lru_hits(stream, 2)
    assert serving.unloads == [model_name("a.tar.gz"), model_name("b.tar.gz")]


def test_the_zipf_stream_is_fixed_by_its_seed_and_favours_low_ranks():
    settings = (endpoint_scale.ZIPF_EXPONENT, endpoint_scale.ZIPF_SEED)
    stream = endpoint_scale.zipf_stream(1000, 2000, *settings)
    assert stream == endpoint_scale.zipf_stream(1000, 2000, *settings)
    counts = sorted((stream.count(m) for m in set(stream)), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]
