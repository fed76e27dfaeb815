"""Packaging: the wheel carries every subpackage and the bundled configs and topologies, so
that after a non-editable install ``p2pmtl run target_localization`` works from any folder."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "p2pmtl").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert {"p2pmtl.bundled.experiments", "p2pmtl.bundled.topologies"} <= listed


def test_version_is_the_distributions():
    import p2pmtl

    assert p2pmtl.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_a_non_editable_install_runs_the_main_job_from_an_empty_folder(tmp_path):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"wheel build failed: {build.stderr[-2000:]}")
    wheel = next(wheels.glob("p2pmtl-*.whl"))
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    assert (site / "p2pmtl" / "bundled" / "topologies" / "li2020_target.toml").is_file()
    assert (site / "p2pmtl" / "bundled" / "experiments" / "target_localization.toml").is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)

    def p2pmtl(*args):
        return subprocess.run([sys.executable, "-m", "p2pmtl", *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import p2pmtl; print(p2pmtl.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the installed copy, not the source tree
    version = p2pmtl("--version")
    assert version.returncode == 0 and version.stdout.strip() == "p2pmtl 0.1.0"
    run = p2pmtl("run", "target_localization", "--set", "iterations=5", "--set", "output.window=5",
                 "--no-figures", "-q", "--out", "r")
    assert run.returncode == 0, run.stderr
    assert (empty / "r" / "summary.json").is_file()
    # a bundled config whose graph is a bundled edge-list file (not a .toml) also runs from here
    assert (site / "p2pmtl" / "bundled" / "topologies" / "dumbbell_victims.edgelist").is_file()
    loaded = subprocess.run([sys.executable, "-c", "import p2pmtl; print(p2pmtl.load_config('clipped_gossip_setting')"
                             ".graph.family)"], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "file", loaded.stderr
    listed = p2pmtl("list")
    assert "li2020_target" in listed.stdout
