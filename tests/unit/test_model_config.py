"""torch-mme.json: every key, its bounds, aliases, and what reaches MMS's register call."""

from __future__ import annotations

import json

import pytest

from handler.model_config import InvalidModelConfig, ModelConfig, WarmupRequest, memory_mb, read


def write(folder, content) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / "torch-mme.json").write_text(text)
    return str(folder)


def test_no_file_is_the_defaults(tmp_path):
    assert read(str(tmp_path)) == ModelConfig()
    assert ModelConfig().register_parameters() == {"batch_size": 1, "max_batch_delay": 100}


def test_every_key_is_read_and_passed_on(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "sample.npy").write_bytes(b"\x93NUMPY")
    config = read(
        write(
            tmp_path / "m",
            {
                "memory_mb": 300,
                "batch_size": 8,
                "max_batch_delay_ms": 20,
                "workers": 2,
                "response_timeout_s": 120,
                "torch_threads": 4,
                "batch_predict_fn": True,
                "warmup": [
                    {"body": [[1, 2, 3]]},
                    {"body": "1,2,3", "content_type": "text/csv", "accept": "text/csv"},
                    {"file": "sample.npy", "content_type": "application/x-npy"},
                ],
            },
        )
    )
    assert config.memory_mb == 300 and config.torch_threads == 4 and config.batch_predict_fn
    assert config.warmup == (
        WarmupRequest(b"[[1, 2, 3]]", "application/json"),
        WarmupRequest(b"1,2,3", "text/csv", "text/csv"),
        WarmupRequest(b"\x93NUMPY", "application/x-npy"),
    )
    assert config.register_parameters() == {
        "batch_size": 8,
        "max_batch_delay": 20,
        "initial_workers": 2,
        "response_timeout": 120,
    }


def test_torchserve_names_are_aliases(tmp_path):
    config = read(write(tmp_path, {"batchSize": 4, "maxBatchDelay": 50, "minWorkers": 3, "responseTimeout": 9}))
    assert (config.batch_size, config.max_batch_delay_ms, config.workers, config.response_timeout_s) == (4, 50, 3, 9)
    with pytest.raises(InvalidModelConfig, match="given twice"):
        read(write(tmp_path, {"batchSize": 4, "batch_size": 4}))


@pytest.mark.parametrize(
    "content, named",
    [
        ({"batch_sise": 4}, "batch_sise"),
        ({"handler": "evil:handle"}, "handler"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 257}, "batch_size"),
        ({"batch_size": "4"}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"workers": 0}, "workers"),
        ({"workers": 33}, "workers"),
        ({"max_batch_delay_ms": -1}, "max_batch_delay_ms"),
        ({"response_timeout_s": 0}, "response_timeout_s"),
        ({"torch_threads": 1.5}, "torch_threads"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": float("nan")}, "memory_mb"),
        ({"batch_predict_fn": "yes"}, "batch_predict_fn"),
        ({"warmup": {"body": 1}}, "warmup"),
        ({"warmup": [{"body": 1, "file": "x"}]}, "warmup[0]"),
        ({"warmup": [{"file": "../../etc/passwd"}]}, "warmup[0]"),
        ({"warmup": [{"file": "/etc/passwd"}]}, "warmup[0]"),
        ({"warmup": [{"body": 1, "extra": 2}]}, "warmup[0]"),
        ({"warmup": [{"body": 1}] * 17}, "warmup"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
        ("[" * 60000, "not valid JSON"),  # nested past the recursion limit
    ],
)
def test_a_bad_config_names_what_is_wrong(tmp_path, content, named):
    with pytest.raises(InvalidModelConfig) as raised:
        read(write(tmp_path / "m", content))
    assert named in str(raised.value)
    assert raised.value.status == 400


def test_a_config_outside_the_model_or_too_large_is_refused(tmp_path):
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "torch-mme.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InvalidModelConfig, match="inside the model folder"):
        read(str(tmp_path / "m"))
    with pytest.raises(InvalidModelConfig, match="larger than"):
        read(write(tmp_path / "big", {"memory_mb": 1, "pad": "x" * 70000}))


def test_memory_mb_alone_is_read_as_read_reads_it(tmp_path):
    assert memory_mb(str(tmp_path)) is None  # no torch-mme.json
    (tmp_path / "torch-mme.json").write_text('{"memory_mb": 900, "warmup": [{"file": "missing.npy"}]}')
    assert memory_mb(str(tmp_path)) == 900.0  # the warm-up files are not read for it
    (tmp_path / "torch-mme.json").write_text('{"batch_size": 4}')
    assert memory_mb(str(tmp_path)) is None
    for content in ("not json", "[512]", '{"memory_mb": "512"}', '{"memory_mb": 0}', '{"memory_mb": true}'):
        (tmp_path / "torch-mme.json").write_text(content)
        with pytest.raises(InvalidModelConfig):
            memory_mb(str(tmp_path))
