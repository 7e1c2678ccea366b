"""Memory readings from fake cgroup trees, and footprints of real artifacts written with torch."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_mme.memory import LOAD_FACTOR, MIB, Footprint, MemoryReading, estimate, estimate_weights, read_memory

GIB = 2**30
KB = 1024
HOST_TOTAL = 24_000_000 * KB
HOST_AVAILABLE = 20_000_000 * KB
LINEAR_BYTES = 4 * (1000 * 1000 + 1000)
"""Parameters of nn.Linear(1000, 1000) in float32."""


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def meminfo(tmp_path: Path, total_kb: int = 24_000_000, available_kb: int | None = 20_000_000) -> str:
    lines = [f"MemTotal:       {total_kb} kB", "MemFree:         1000000 kB"]
    if available_kb is not None:
        lines.append(f"MemAvailable:   {available_kb} kB")
    lines += ["Buffers:           20000 kB", "Cached:          3000000 kB", "HugePages_Total:       0"]
    path = tmp_path / "meminfo"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cgroup_v2(tmp_path: Path, limit: str, current: str, stat: str | None = None) -> str:
    files = {"memory.max": limit + "\n", "memory.current": current + "\n"}
    if stat is not None:
        files["memory.stat"] = stat
    return str(write_files(tmp_path / "cgroup", files))


def cgroup_v1(tmp_path: Path, limit: str, usage: str, stat: str | None = None) -> str:
    files = {"memory.limit_in_bytes": limit + "\n", "memory.usage_in_bytes": usage + "\n"}
    if stat is not None:
        files["memory.stat"] = stat
    write_files(tmp_path / "cgroup" / "memory", files)
    return str(tmp_path / "cgroup")


# --------------------------------------------------------------------------- read_memory


def test_cgroup_v2_limit_and_use(tmp_path):
    reading = read_memory(cgroup_v2(tmp_path, "1073741824", "268435456"), meminfo(tmp_path))
    assert reading == MemoryReading(GIB, 256 * MIB, "cgroup v2")
    assert reading.available_bytes == 768 * MIB


def test_cgroup_v2_inactive_page_cache_is_not_use(tmp_path):
    stat = "anon 100\nfile 200000000\nactive_file 1000\ninactive_file 134217728\n"
    reading = read_memory(cgroup_v2(tmp_path, "1073741824", "268435456", stat), meminfo(tmp_path))
    assert reading.used_bytes == 128 * MIB


def test_cgroup_v2_max_means_the_host(tmp_path):
    reading = read_memory(cgroup_v2(tmp_path, "max", "268435456"), meminfo(tmp_path))
    assert reading == MemoryReading(HOST_TOTAL, HOST_TOTAL - HOST_AVAILABLE, "host")
    assert reading.available_bytes == HOST_AVAILABLE


def test_cgroup_v2_limit_above_the_host_is_capped_at_mem_total(tmp_path):
    reading = read_memory(cgroup_v2(tmp_path, str(64 * GIB), "0"), meminfo(tmp_path))
    assert reading.source == "cgroup v2"
    assert reading.limit_bytes == HOST_TOTAL
    assert reading.available_bytes == HOST_AVAILABLE


def test_available_is_capped_by_the_hosts_mem_available(tmp_path):
    # 8 GiB allowed and nothing used, but the host has only ~1 GiB left.
    reading = read_memory(cgroup_v2(tmp_path, str(8 * GIB), "0"), meminfo(tmp_path, available_kb=1_000_000))
    assert reading.source == "cgroup v2"
    assert reading.limit_bytes == 8 * GIB
    assert reading.available_bytes == 1_000_000 * KB


def test_cgroup_v1_limit_usage_and_inactive_file(tmp_path):
    stat = "cache 300000000\nrss 50000000\ninactive_file 1\ntotal_rss 50000000\ntotal_inactive_file 67108864\n"
    reading = read_memory(cgroup_v1(tmp_path, str(2 * GIB), str(512 * MIB), stat), meminfo(tmp_path))
    assert reading == MemoryReading(2 * GIB, 448 * MIB, "cgroup v1")
    assert reading.available_bytes == 2 * GIB - 448 * MIB


def test_cgroup_v1_without_memory_stat_counts_all_usage(tmp_path):
    reading = read_memory(cgroup_v1(tmp_path, str(2 * GIB), str(512 * MIB)), meminfo(tmp_path))
    assert reading == MemoryReading(2 * GIB, 512 * MIB, "cgroup v1")


@pytest.mark.parametrize("limit", ["9223372036854771712", str(2**60), str(HOST_TOTAL + 4096)])
def test_cgroup_v1_huge_limit_means_the_host(tmp_path, limit):
    reading = read_memory(cgroup_v1(tmp_path, limit, str(512 * MIB)), meminfo(tmp_path))
    assert reading == MemoryReading(HOST_TOTAL, HOST_TOTAL - HOST_AVAILABLE, "host")


def test_no_cgroup_files_means_the_host(tmp_path):
    reading = read_memory(str(tmp_path / "no-cgroup"), meminfo(tmp_path))
    assert reading.source == "host"
    assert reading.limit_bytes == 24_000_000 * 1024
    assert reading.used_bytes == 4_000_000 * 1024


def test_unreadable_cgroup_values_are_ignored(tmp_path):
    reading = read_memory(cgroup_v2(tmp_path, "lots", "268435456"), meminfo(tmp_path))
    assert reading.source == "host"


def test_old_kernels_without_mem_available_use_free_buffers_and_cached(tmp_path):
    reading = read_memory(str(tmp_path / "none"), meminfo(tmp_path, available_kb=None))
    assert reading.available_bytes == (1_000_000 + 20_000 + 3_000_000) * KB


def test_a_cgroup_limit_without_meminfo_is_used_alone(tmp_path):
    reading = read_memory(cgroup_v2(tmp_path, "1073741824", "268435456"), str(tmp_path / "no-meminfo"))
    assert reading == MemoryReading(GIB, 256 * MIB, "cgroup v2")


def test_nothing_readable_raises(tmp_path):
    with pytest.raises(OSError, match="no cgroup memory limit"):
        read_memory(str(tmp_path / "none"), str(tmp_path / "no-meminfo"))


def test_available_is_never_negative():
    assert MemoryReading(GIB, 2 * GIB, "cgroup v1").available_bytes == 0


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only")
def test_this_machine_gives_a_reading():
    reading = read_memory()
    assert reading.source in {"cgroup v2", "cgroup v1", "host"}
    assert 0 < reading.available_bytes <= reading.limit_bytes


def test_the_module_does_not_import_torch():
    code = "import sys, torch_mme.memory; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# --------------------------------------------------------------------------- estimate_weights


def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    return path


def big_linear() -> torch.nn.Linear:
    return torch.nn.Linear(1000, 1000)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]], metadata: bool = True) -> None:
    """A safetensors file: 8-byte header length, JSON header, zeroed data.

    ``tensors`` maps each name to its dtype, shape and byte count.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}} if metadata else {}
    offset = 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_torchscript_counts_its_storages(tmp_path):
    folder = model_dir(tmp_path)
    torch.jit.script(big_linear()).save(str(folder / "model.pt"))
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == pytest.approx(LINEAR_BYTES, rel=0.01)
    assert footprint.detail.startswith("model.pt: 2 tensors, 3.8 MiB (TorchScript)")
    assert "\n" not in footprint.detail


@pytest.mark.filterwarnings("ignore:`torch.jit.freeze` is deprecated:DeprecationWarning")
def test_frozen_torchscript_counts_its_constants(tmp_path):
    folder = model_dir(tmp_path)
    torch.jit.freeze(torch.jit.script(big_linear().eval())).save(str(folder / "model.pt"))
    assert estimate_weights(str(folder)).weights_bytes == pytest.approx(LINEAR_BYTES, rel=0.01)


def test_state_dict(tmp_path):
    folder = model_dir(tmp_path)
    torch.save(big_linear().state_dict(), folder / "model.pth")
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == pytest.approx(LINEAR_BYTES, rel=0.01)
    assert "model.pth: 2 tensors" in footprint.detail
    assert "(torch.save)" in footprint.detail


def test_whole_module(tmp_path):
    folder = model_dir(tmp_path)
    torch.save(big_linear(), folder / "model.pth")
    assert estimate_weights(str(folder)).weights_bytes == pytest.approx(LINEAR_BYTES, rel=0.01)


def test_shared_storage_is_counted_once(tmp_path):
    folder = model_dir(tmp_path)
    weight = torch.zeros(1000, 250)
    torch.save({"a": weight, "b": weight, "row": weight[0]}, folder / "tied.bin")
    assert estimate_weights(str(folder)).weights_bytes == 1000 * 250 * 4


def test_legacy_pickle_counts_its_file_size(tmp_path):
    folder = model_dir(tmp_path)
    torch.save(big_linear().state_dict(), folder / "model.pth", _use_new_zipfile_serialization=False)
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == (folder / "model.pth").stat().st_size
    assert footprint.weights_bytes >= LINEAR_BYTES
    assert "legacy pickle" in footprint.detail


def test_exported_program(tmp_path):
    folder = model_dir(tmp_path)
    linear = torch.nn.Linear(100, 50)
    example = torch.randn(1000, 100)  # 400 kB of sample inputs, saved in the archive but not weights
    torch.export.save(torch.export.export(linear, (example,)), folder / "model.pt2")
    params = 4 * (100 * 50 + 50)
    footprint = estimate_weights(str(folder))
    assert params <= footprint.weights_bytes <= params * 1.1
    assert "(torch.export)" in footprint.detail


def test_exported_program_counts_buffers_and_constants(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(10, 20)
            self.norm = torch.nn.BatchNorm1d(20)
            self.register_buffer("scale", torch.ones(20), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.linear(x)) * self.scale

    folder = model_dir(tmp_path)
    torch.export.save(torch.export.export(Net().eval(), (torch.randn(2, 10),)), folder / "model.pt2")
    # weight, bias, norm weight, bias, running mean, var (float32), num_batches_tracked (int64), scale.
    expected = 4 * (200 + 20 + 20 + 20 + 20 + 20 + 20) + 8
    assert estimate_weights(str(folder)).weights_bytes == expected


def test_safetensors_header(tmp_path):
    folder = model_dir(tmp_path)
    write_safetensors(folder / "model.safetensors", {"w": ("F32", [10, 20], 800), "b": ("BF16", [4], 8)})
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == 808
    assert footprint.detail.startswith("model.safetensors: 2 tensors, 808 B (safetensors)")


def test_safetensors_of_an_unknown_dtype_uses_its_byte_range(tmp_path):
    folder = model_dir(tmp_path)
    write_safetensors(folder / "model.safetensors", {"w": ("F4", [64], 32), "x": ("I64", [], 8)}, metadata=False)
    assert estimate_weights(str(folder)).weights_bytes == 40


def with_length(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    "content",
    [
        struct.pack("<Q", 2**40) + b"{}",  # header length beyond the cap
        with_length(b"{nope"),  # not JSON
        with_length(b"[]"),  # not an object
        b"\x01\x02",  # shorter than the length field
        with_length(
            b'{"w": {"dtype": "F32", "shape": [1000000000], "data_offsets": [0, 4000000000]}}'
        ),  # more than the file
        with_length(b'{"w": {"dtype": ["F32"], "shape": [3]}}'),  # a dtype of the wrong type
        with_length(b'{"w": {"dtype": "F32", "shape": [-3]}}'),  # a negative dimension
        with_length(b'{"w": {"dtype": "F4", "shape": [8]}}'),  # an unknown dtype without a byte range
    ],
)
def test_malformed_safetensors_counts_its_file_size(tmp_path, content):
    folder = model_dir(tmp_path)
    (folder / "model.safetensors").write_bytes(content + bytes(100))
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == len(content) + 100
    assert "bad safetensors header" in footprint.detail


def test_declared_memory_wins_and_weights_are_still_counted(tmp_path):
    folder = model_dir(tmp_path)
    torch.save(big_linear().state_dict(), folder / "model.pth")
    (folder / "torch-mme.json").write_text(json.dumps({"memory_mb": 512}))
    assert estimate_weights(str(folder)).weights_bytes == pytest.approx(LINEAR_BYTES, rel=0.01)  # not the config
    declared = estimate(str(folder), memory_mb=512, overhead_bytes=100 * MIB)
    assert declared.bytes == 512 * MIB  # the owner's word, overhead included
    assert "model.pth" in declared.detail and declared.detail.endswith("torch-mme.json declares 512 MiB")


def test_without_a_declaration_the_estimate_is_the_overhead_and_the_weights_with_their_load_copies(tmp_path):
    folder = model_dir(tmp_path)
    (folder / "weights.npy").write_bytes(bytes(1000))
    (folder / "torch-mme.json").write_text('{"batch_size": 4}')  # the model's config, not its weights
    assert estimate_weights(str(folder)).weights_bytes == 1000
    assert estimate(str(folder), None, overhead_bytes=40 * MIB).bytes == 40 * MIB + int(1000 * LOAD_FACTOR)
    assert estimate(str(folder)).bytes == int(1000 * LOAD_FACTOR)


def test_a_fractional_declaration_rounds_up(tmp_path):
    assert estimate(str(model_dir(tmp_path)), memory_mb=0.5).bytes == MIB // 2


def test_other_files_count_their_size_and_the_code_folder_is_skipped(tmp_path):
    folder = model_dir(tmp_path)
    np.save(folder / "embedding.npy", np.zeros((100, 10), dtype=np.float32))
    (folder / "vocab.json").write_text(json.dumps({str(i): i for i in range(100)}))
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    (folder / "code" / "lookup.bin").write_bytes(bytes(10 * MIB))
    (folder / "extra").mkdir()
    (folder / "extra" / "code").mkdir()
    (folder / "extra" / "code" / "table.bin").write_bytes(bytes(300))
    footprint = estimate_weights(str(folder))
    sizes = [(folder / n).stat().st_size for n in ("embedding.npy", "vocab.json", "extra/code/table.bin")]
    assert footprint.weights_bytes == sum(sizes)
    assert "inference.py" not in footprint.detail
    assert "total" in footprint.detail and "in 3 files" in footprint.detail


def test_links_outside_the_model_dir_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge.bin").write_bytes(bytes(MIB))
    (outside / "more.bin").write_bytes(bytes(MIB))
    folder = model_dir(tmp_path)
    (folder / "weights.bin").write_bytes(bytes(100))
    (folder / "stolen.bin").symlink_to(outside / "huge.bin")
    (folder / "elsewhere").symlink_to(outside, target_is_directory=True)
    (folder / "alias.bin").symlink_to(folder / "weights.bin")  # inside, but the same file: counted once
    (folder / "dangling.bin").symlink_to(folder / "missing.bin")
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == 100
    assert "1 link outside the model dir skipped" in footprint.detail


def test_a_model_dir_reached_through_a_link_is_read(tmp_path):
    folder = model_dir(tmp_path)
    (folder / "weights.bin").write_bytes(bytes(100))
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    assert estimate_weights(str(link)).weights_bytes == 100


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_not_opened(tmp_path):
    folder = model_dir(tmp_path)
    os.mkfifo(folder / "pipe.pt")
    assert estimate_weights(str(folder)).weights_bytes == 0


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".ckpt"])
def test_a_corrupt_zip_counts_its_file_size(tmp_path, suffix):
    folder = model_dir(tmp_path)
    (folder / f"model{suffix}").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == 4 + 1024
    assert "unreadable zip" in footprint.detail


def test_a_truncated_torch_archive_counts_its_file_size(tmp_path):
    folder = model_dir(tmp_path)
    torch.save(big_linear().state_dict(), folder / "model.pth")
    data = (folder / "model.pth").read_bytes()
    (folder / "model.pth").write_bytes(data[: len(data) // 2])
    assert estimate_weights(str(folder)).weights_bytes == len(data) // 2


def test_a_zip_without_tensors_counts_its_file_size(tmp_path):
    folder = model_dir(tmp_path)
    with zipfile.ZipFile(folder / "model.bin", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/other/blob", bytes(MIB))
    assert estimate_weights(str(folder)).weights_bytes == (folder / "model.bin").stat().st_size


def test_detail_names_the_largest_files_only(tmp_path):
    folder = model_dir(tmp_path)
    for i in range(10):
        (folder / f"shard-{i}.bin").write_bytes(bytes(1000 + i))
    footprint = estimate_weights(str(folder))
    assert footprint.weights_bytes == sum(1000 + i for i in range(10))
    assert footprint.detail.startswith("shard-9.bin: 1009 B (legacy pickle, file size); shard-8.bin")
    assert "6 more, " in footprint.detail
    assert "shard-0.bin" not in footprint.detail


def test_a_missing_dir_has_no_footprint(tmp_path):
    assert estimate_weights(str(tmp_path / "missing")) == Footprint(0, f"{tmp_path / 'missing'}: not a directory")


def test_an_empty_dir(tmp_path):
    footprint = estimate_weights(str(model_dir(tmp_path)))
    assert footprint == Footprint(0, "total 0 B in 0 files")


def test_admission_without_a_readable_memory_source_relies_on_the_budget(tmp_path):
    from torch_mme.runtime.admission import MB, Admission
    from torch_mme.runtime.registry import Registry
    from torch_mme.settings import Settings

    def unreadable():
        raise OSError("no /proc/meminfo")

    admission = Admission(Settings(), Registry(), read=unreadable)
    assert admission.check(10_000 * MB).fits
    budgeted = Admission(Settings(memory_budget_mb=100), Registry(), read=unreadable)
    assert not budgeted.check(10_000 * MB).fits
