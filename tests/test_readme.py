"""README's commands run as written (and the docs/ pages'): every ```bash block (after
``memtune demo`` made the example project beside them) and every ```python block, in a
fresh folder and cache.
```sh blocks are the ones that install, or need hardware this machine lacks (GPUs, a
cluster); ```text blocks are output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
# README and the docs/ pages it links: every runnable block, wherever it lives, runs here
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.slow


def blocks(kind: str) -> list[str]:
    return [
        body for page in PAGES for lang, body in BLOCK.findall(page.read_text()) if lang == kind
    ]


def test_the_readme_has_runnable_blocks() -> None:
    assert len(blocks("bash")) >= 2 and len(blocks("python")) >= 1
    assert any("memtune-demo" in block for block in blocks("bash"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """README's first command, ``memtune demo``, run once: the folder, the environment and
    what it printed."""
    folder = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "MEMTUNE_CACHE_DIR": str(folder / ".cache")}
    bin_dir = str(Path(sys.executable).parent)  # the memtune this test runs against
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    done = subprocess.run(["memtune", "demo"], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder, env, done.stdout


@pytest.fixture(scope="module")
def project(demo: tuple[Path, dict[str, str], str]) -> tuple[Path, dict[str, str]]:
    return demo[0], demo[1]


def test_the_demo_writes_plans_and_trains(demo: tuple[Path, dict[str, str], str]) -> None:
    folder, _, out = demo
    target = folder / "memtune-demo"
    shards = sorted(p.name for p in (target / "shards").iterdir())
    assert "10.csv" in shards and len(shards) == 12
    assert (target / "shards" / "0.csv").read_text().splitlines()[1].startswith('"[')
    assert "clicks: sequences up to 60 long are truncated to 30" in out
    assert "memtune plan" in out
    assert "epoch 2/2:" in out and "memtune fit" in out  # the demo trains, with live memory
    assert (target / "model.keras").is_file()


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_each_bash_block_runs(project: tuple[Path, dict[str, str]], index: int) -> None:
    folder, env = project
    script = blocks("bash")[index]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"block {index}:\n{script}\n--- stderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert "planning again" not in done.stderr  # a kept plan is used as it is


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_each_python_block_runs(project: tuple[Path, dict[str, str]], index: int) -> None:
    folder, env = project
    done = subprocess.run(
        [sys.executable, "-c", blocks("python")[index]],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "planning again" not in done.stderr
