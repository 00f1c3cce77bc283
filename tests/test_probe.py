from pathlib import Path

import psutil
import pytest

from memtune.core.budget import resolve_budget, resolve_device
from memtune.core.errors import MemtuneError
from memtune.probe import probe
from memtune.probe.host import cgroup_memory, oom_kills, read_host
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


MiB = 1024**2


def _tree(root: Path, files: dict[str, int | str]) -> None:
    for name, value in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{value}\n")


def test_the_process_own_v2_cgroup_and_its_parents_are_read(tmp_path: Path) -> None:
    """Inside an 1800 MiB cgroup the root shows no limit: memtune reads its own cgroup
    (and every parent's), as /proc/self/cgroup names it."""
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/jobs/train/step\n")
    root = tmp_path / "sys"
    _tree(root, {
        "memory.max": "max",  # the root: no limit, what memtune read before
        "jobs/memory.max": "max",
        "jobs/train/memory.max": 1800 * MiB,
        "jobs/train/memory.current": 500 * MiB,
        "jobs/train/step/memory.max": "max",
        "jobs/train/step/memory.current": 300 * MiB,
    })  # fmt: skip
    assert cgroup_memory(root, proc) == (1800 * MiB, 500 * MiB)
    host = read_host(root, proc)
    assert host.limit_bytes == 1800 * MiB and host.available_bytes <= 1300 * MiB
    (root / "jobs/train/step/memory.high").write_text(f"{1000 * MiB}\n")  # tighter, nearer
    assert cgroup_memory(root, proc) == (1000 * MiB, 300 * MiB)


def test_the_process_own_v1_memory_cgroup_is_read(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("5:cpu,cpuacct:/x\n4:memory:/process_api/abc\n0::/\n")
    root = tmp_path / "sys"
    _tree(root, {
        "memory/memory.limit_in_bytes": 9223372036854771712,  # the root: "no limit"
        "memory/process_api/memory.limit_in_bytes": 9223372036854771712,
        "memory/process_api/abc/memory.limit_in_bytes": 2 * GiB,
        "memory/process_api/abc/memory.usage_in_bytes": GiB,
    })  # fmt: skip
    assert cgroup_memory(root, proc) == (2 * GiB, GiB)


def test_a_cgroup_path_this_mount_does_not_show_falls_back_to_the_root(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/some/host/path\n")
    _tree(tmp_path / "sys", {"memory.max": 3 * GiB, "memory.current": GiB})
    assert cgroup_memory(tmp_path / "sys", proc) == (3 * GiB, GiB)
    assert cgroup_memory(tmp_path / "sys", tmp_path / "no-such-file") == (3 * GiB, GiB)


def test_oom_kills_are_counted_in_the_own_cgroup_its_parents_and_the_host(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/jobs/a\n0::/jobs/train\n")
    root, vmstat = tmp_path / "sys", tmp_path / "vmstat"
    _tree(root, {
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0",  # not counted twice
        "jobs/memory.events": "low 0\nhigh 3\nmax 9\noom 2\noom_kill 2\noom_group_kill 0",
        "jobs/train/memory.events": "oom 1\noom_kill 1",
        "jobs/train/memory.max": GiB,
        "memory/jobs/a/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 4",
    })  # fmt: skip
    vmstat.write_text("nr_free_pages 1\noom_kill 5\n")
    assert oom_kills(root, proc, vmstat) == 2 + 1 + 4 + 5
    assert oom_kills(tmp_path / "none", tmp_path / "none", tmp_path / "none") == 0
