"""The documentation works: every ```python block of the how-to pages and of the getting-started
page runs (each page's blocks in order, in a process of its own, in an empty folder), and every
configuration key has a description (the generated configuration reference shows them).

The page processes are forked (two at a time) from one runner process that imports p2pmtl,
torch and pandas once (importing torch takes seconds), so that the pages run in well under a
minute; where fork is unavailable each page runs in a plain fresh interpreter. Either way a page starts with the
registries as ``import p2pmtl`` leaves them: pages cannot see each other's components.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted((DOCS / "howto").glob("*.md")) + [DOCS / "index.md"]
PAGE_TIMEOUT = 120

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page, in order (other languages are left alone)."""
    return [textwrap.dedent(b) for b in _BLOCK.findall(page.read_text(encoding="utf-8"))]


RUNNER = r'''
import json, os, sys, traceback

pages = json.loads(sys.argv[1])
results = {}

def run_page(script, workdir):
    os.chdir(workdir)
    code = compile(open(script, encoding="utf-8").read(), script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script})

if hasattr(os, "fork"):
    import matplotlib
    matplotlib.use("Agg")
    import p2pmtl, torch, pandas, matplotlib.pyplot  # noqa: F401  (once, before forking)
    p2pmtl.ExperimentConfig, p2pmtl.TASKS, p2pmtl.RULES  # import the lazy modules too
    def start(name, script, workdir, log):
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 0
            try:
                run_page(script, workdir)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return pid

    running = {}
    todo = list(pages)
    width = max(1, min(2, os.cpu_count() or 1))
    while todo or running:
        while todo and len(running) < width:
            job = todo.pop(0)
            running[start(*job)] = job[0]
        pid, status = os.wait()
        if pid in running:
            results[running.pop(pid)] = os.waitstatus_to_exitcode(status)
else:
    import subprocess
    for name, script, workdir, log in pages:
        with open(log, "w") as f:
            results[name] = subprocess.run([sys.executable, script], cwd=workdir, stdout=f,
                                           stderr=subprocess.STDOUT, timeout=%d).returncode
print(json.dumps(results))
''' % PAGE_TIMEOUT


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """Run every page once; {page name: (exit code, output)}."""
    base = tmp_path_factory.mktemp("docs")
    jobs = []
    for page in PAGES:
        blocks = python_blocks(page)
        if not blocks:
            continue
        name = str(page.relative_to(DOCS))
        slug = name.replace("/", "_").removesuffix(".md")
        workdir = base / slug
        workdir.mkdir()
        script = base / f"{slug}.py"
        script.write_text("\n\n".join(blocks), encoding="utf-8")
        jobs.append((name, str(script), str(workdir), str(base / f"{slug}.log")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), MPLBACKEND="Agg", PYTHONHASHSEED="0")
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs)], cwd=base, env=env,
                         capture_output=True, text=True, timeout=PAGE_TIMEOUT * max(1, len(jobs)))
    assert out.returncode == 0, out.stderr[-4000:]
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    return {name: (codes[name], Path(log).read_text(errors="replace")) for name, _, _, log in jobs}


@pytest.mark.parametrize("page", [str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, page_runs):
    blocks = python_blocks(DOCS / page)
    if page.startswith("howto/") and page != "howto/index.md":
        assert blocks, f"{page}: a how-to needs at least one complete ```python block"
    if not blocks:
        return
    code, output = page_runs[page]
    assert code == 0, f"docs/{page}: its python blocks failed (exit {code}):\n{output[-6000:]}"


def test_howto_names_are_unique_across_pages():
    """Components registered by the how-tos carry a ``howto_`` prefix and no two pages register
    the same name (pages may then be run together, e.g. pasted into one notebook)."""
    pattern = re.compile(r"register_\w+\(\s*\"([^\"]+)\"")
    seen: dict[str, str] = {}
    for page in PAGES:
        for block in python_blocks(page):
            for name in pattern.findall(block):
                assert name.startswith("howto_"), f"{page.name}: registered name {name!r} lacks the howto_ prefix"
                assert seen.setdefault(name, page.name) == page.name, \
                    f"{name!r} registered by {seen[name]} and {page.name}"


def _hooks():
    spec = importlib.util.spec_from_file_location("p2pmtl_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_key_has_a_description():
    hooks = _hooks()
    keys = list(hooks.all_fields())
    assert len(keys) > 100, "the walk should reach the nested tables and every task's config"
    missing = hooks.missing_descriptions()
    assert not missing, "config keys without a description (Field(description=...)):\n  " + "\n  ".join(missing)


def test_config_reference_lists_every_key():
    hooks = _hooks()
    page = hooks.render()
    for prefix, model, name, field in hooks.all_fields():
        assert f"| `{name}` |" in page, f"{model.__name__}.{name} missing from the configuration reference"
    assert "{ #params-attack }" in page and "`uniform`" in page


def test_readme_keeps_the_ci_commands_and_stays_short():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < 15_000
    assert 'pip install -e ".[dev]"' in readme
    assert "python -m pytest" in readme
