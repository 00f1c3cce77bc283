from pathlib import Path

import psutil
import pytest

from memtune.errors import MemtuneError
from memtune.plan import resolve_budget, resolve_device
from memtune.probe import probe
from memtune.probe.host import cgroup_memory
from tests.nvml_fakes import SCENARIOS, GiB


@pytest.fixture(autouse=True)
def _no_visible_devices_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_no_driver_is_an_empty_list(tmp_path: Path) -> None:
    result = probe(nvml=SCENARIOS["no_driver"](), cgroup_root=tmp_path)
    assert result.gpus == []
    assert result.warnings == []


def test_no_gpu(tmp_path: Path) -> None:
    fake = SCENARIOS["no_gpu"]()
    result = probe(nvml=fake, cgroup_root=tmp_path)
    assert result.gpus == []
    assert fake.shutdowns == 1


def test_one_gpu_json(tmp_path: Path) -> None:
    result = probe(nvml=SCENARIOS["one_gpu"](), cgroup_root=tmp_path)
    assert result.to_json()["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA A10",
            "total_bytes": 24 * GiB,
            "free_bytes": 20 * GiB,
            "used_bytes": 4 * GiB,
        }
    ]


def test_two_gpus_auto_picks_most_free(tmp_path: Path) -> None:
    result = probe(nvml=SCENARIOS["two_gpus"](), cgroup_root=tmp_path)
    assert [g.free_bytes for g in result.gpus] == [10 * GiB, 70 * GiB]
    assert resolve_device(result, "auto") == "gpu:1"
    assert resolve_device(result, "gpu:0") == "gpu:0"
    budget = resolve_budget(result, "gpu:0", None)
    assert budget.budget_bytes == 10 * GiB
    assert "free memory of gpu:0" in budget.source


def test_error_mid_query_keeps_the_good_gpu(tmp_path: Path) -> None:
    fake = SCENARIOS["error_mid_query"]()
    result = probe(nvml=fake, cgroup_root=tmp_path)
    assert [g.index for g in result.gpus] == [0]
    assert "GPU 1 could not be read" in result.warnings[0]
    assert fake.shutdowns == 1
    assert "warnings" in result.to_json()


def test_cuda_visible_devices_renumbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    result = probe(nvml=SCENARIOS["two_gpus"](), cgroup_root=tmp_path)
    assert [(g.index, g.free_bytes) for g in result.gpus] == [(0, 70 * GiB)]


def test_device_errors(tmp_path: Path) -> None:
    none = probe(nvml=SCENARIOS["no_gpu"](), cgroup_root=tmp_path)
    assert resolve_device(none, "auto") == "cpu"
    with pytest.raises(MemtuneError, match="--device gpu: no GPU"):
        resolve_device(none, "gpu")
    with pytest.raises(MemtuneError, match="no such GPU"):
        resolve_device(probe(nvml=SCENARIOS["one_gpu"](), cgroup_root=tmp_path), "gpu:3")
    with pytest.raises(MemtuneError, match="expected auto, cpu"):
        resolve_device(none, "tpu")


def test_cgroup_v2_limit_caps_available(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("2147483648\n")
    (tmp_path / "memory.current").write_text("536870912\n")
    result = probe(nvml=None, cgroup_root=tmp_path)
    assert result.host.limit_bytes == 2 * GiB
    assert result.host.total_bytes == min(2 * GiB, psutil.virtual_memory().total)
    assert result.host.available_bytes <= 2 * GiB - 512 * 1024**2
    budget = resolve_budget(result, "cpu", None)
    assert "cgroup" in budget.source


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory(tmp_path) == (None, None)


def test_cgroup_v1(tmp_path: Path) -> None:
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(str(4 * GiB))
    (v1 / "memory.usage_in_bytes").write_text(str(GiB))
    assert cgroup_memory(tmp_path) == (4 * GiB, GiB)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert cgroup_memory(tmp_path)[0] is None


def test_no_cgroup_files(tmp_path: Path) -> None:
    result = probe(nvml=None, cgroup_root=tmp_path)
    assert result.host.limit_bytes is None
    assert 0 < result.host.available_bytes <= result.host.total_bytes
