"""The benchmarks' code-keyed result cache (`benchmarks/common.py`).

A table in `docs/` must come from the code at HEAD: a cached result is reused only
when the settings and the hash of every `larq_cwr` module the benchmarks run are the
same. These tests load a copy of `common.py` beside a copy of the package, so they can
edit sources without touching the checkout.
"""

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = ROOT / "benchmarks" / "common.py"


def _load_common(root: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, root / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A copy of `benchmarks/` (without results) and `larq_cwr/`, and `common` loaded
    from it."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(
        ROOT / "benchmarks",
        root / "benchmarks",
        ignore=shutil.ignore_patterns("__pycache__", "results"),
    )
    shutil.copytree(
        ROOT / "larq_cwr", root / "larq_cwr", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root, _load_common(root, "common_copy")


def _hash(common) -> str:
    common.code_hash.cache_clear()  # computed once per process in a benchmark
    return common.code_hash()


def _edit(path: pathlib.Path, text: str) -> str:
    original = path.read_text()
    path.write_text(original + text)
    return original


def test_hash_changes_with_a_module_the_benchmarks_run(copied):
    root, common = copied
    before = _hash(common)
    assert before == _hash(_load_common(ROOT, "common_checkout"))  # paths are relative
    # head.py is reached only through other modules (training, experiment).
    original = _edit(root / "larq_cwr" / "head.py", "\n# an edit\n")
    try:
        assert _hash(common) != before
    finally:
        (root / "larq_cwr" / "head.py").write_text(original)
    assert _hash(common) == before


def test_hash_ignores_modules_no_benchmark_runs(copied):
    root, common = copied
    before = _hash(common)
    original = _edit(root / "larq_cwr" / "cli.py", "\n# an edit\n")
    try:
        assert _hash(common) == before
    finally:
        (root / "larq_cwr" / "cli.py").write_text(original)


SCRIPTS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("common",)
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_module_a_benchmark_loads_is_hashed(name):
    """Independent of the AST walk: the `larq_cwr` modules Python actually loads when
    a benchmark script is imported (and with it the experiment runner, which imports
    some modules inside functions) are all in that script's hashed set."""
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        f"import {name}, larq_cwr.experiment;"
        "print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())"
        " if (n == 'larq_cwr' or n.startswith('larq_cwr.'))"
        " and getattr(m, '__file__', None))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "benchmarks")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    loaded = {pathlib.Path(p).resolve() for p in json.loads(out.splitlines()[-1])}
    common = _load_common(ROOT, "common_checkout")
    path = ROOT / "benchmarks" / f"{name}.py"
    hashed = {p.resolve() for p in common._reachable_sources(COMMON, path)}
    assert loaded, "no larq_cwr module was loaded"
    assert loaded <= hashed, sorted(str(p) for p in loaded - hashed)


def test_hash_covers_what_the_running_script_reaches(copied):
    root, common = copied
    script = root / "benchmarks" / "device.py"  # runs the device export
    common.code_hash.cache_clear()
    before, without = common.code_hash(script), common.code_hash()
    original = _edit(root / "larq_cwr" / "export.py", "\n# an edit\n")
    try:
        common.code_hash.cache_clear()
        assert common.code_hash(script) != before
        # pytest is not a benchmark script: only what `common` reaches counts.
        assert common.code_hash() == without
    finally:
        (root / "larq_cwr" / "export.py").write_text(original)
    # A sibling module the script imports counts too.
    step_time = root / "benchmarks" / "step_time.py"  # imports docblock
    common.code_hash.cache_clear()
    before = common.code_hash(step_time)
    original = _edit(root / "benchmarks" / "docblock.py", "\n# an edit\n")
    try:
        common.code_hash.cache_clear()
        assert common.code_hash(step_time) != before
    finally:
        (root / "benchmarks" / "docblock.py").write_text(original)


def _run_benchmark_script(root: pathlib.Path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` as a script in ``root``'s ``benchmarks/`` (as `python script.py`)."""
    script = root / "benchmarks" / "which_package.py"
    script.write_text(body)
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
    finally:
        script.unlink()


def test_a_benchmark_runs_the_package_of_its_own_checkout(copied):
    # A worktree's benchmark imported the installed checkout's larq_cwr while its hash
    # read the worktree's sources: results keyed by code they did not run.
    root, _ = copied
    ran = _run_benchmark_script(
        root,
        "import common, larq_cwr\n"
        "print(larq_cwr.__file__)\n"
        "print(common.code_hash())\n",
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    package, digest = ran.stdout.splitlines()[-2:]
    assert pathlib.Path(package).resolve().parent == root / "larq_cwr"
    assert ROOT not in pathlib.Path(package).resolve().parents
    assert len(digest) == 16
    # Another larq_cwr imported before `common`: the hash would not describe it.
    refused = _run_benchmark_script(
        root,
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "import larq_cwr, common\n"
        "print(common.code_hash())\n",
    )
    assert refused.returncode != 0
    assert f"the larq_cwr running is {ROOT / 'larq_cwr'}" in refused.stderr


def test_hash_does_not_depend_on_how_the_script_is_named(copied, monkeypatch):
    # A relative path sorted before the absolute ones and gave another hash.
    root, common = copied
    script = root / "benchmarks" / "step_time.py"
    common.code_hash.cache_clear()
    absolute = common.code_hash(script)
    monkeypatch.chdir(root)
    common.code_hash.cache_clear()
    assert common.code_hash("benchmarks/step_time.py") == absolute
    assert (
        common.code_hash(pathlib.Path("benchmarks") / ".." / "benchmarks" / "step_time.py")
        == absolute
    )


def test_cached_reuses_only_same_code_and_settings(copied, tmp_path, monkeypatch):
    _, common = copied
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    path = tmp_path / "result.json"
    monkeypatch.setattr(common, "code_hash", lambda: "aaaa")
    assert common.cached(path, {"epochs": 5}, compute) == {"value": 1}
    assert common.cached(path, {"epochs": 5}, compute) == {"value": 1}  # reused
    assert len(calls) == 1
    assert common.cached(path, {"epochs": 6}, compute) == {"value": 2}  # settings
    monkeypatch.setattr(common, "code_hash", lambda: "bbbb")
    assert common.cached(path, {"epochs": 6}, compute) == {"value": 3}  # code
    stored = json.loads(path.read_text())
    assert stored["settings"] == {"epochs": 6, "code": "bbbb"}
    assert stored["result"] == {"value": 3}


def test_cached_reuses_a_result_whose_settings_hold_tuples(copied, tmp_path, monkeypatch):
    """JSON stores a tuple as a list: the key must compare as stored."""
    _, common = copied
    calls = []
    monkeypatch.setattr(common, "code_hash", lambda: "aaaa")
    path = tmp_path / "result.json"
    settings = {"lrs": (0.01, 0.04), "nested": {"bits": (8, 16)}}
    for _ in range(2):
        common.cached(path, settings, lambda: calls.append(1) or len(calls))
    assert len(calls) == 1


def test_seed_records_caches_one_file_per_seed(copied, tmp_path, monkeypatch):
    _, common = copied
    monkeypatch.setattr(common, "code_hash", lambda: "aaaa")
    calls = []

    def run(seed):
        calls.append(seed)
        return {"seed": seed, "value": 10 * seed}

    for _ in range(2):
        records = common.seed_records(
            run, [3, 1], results=tmp_path / "r", name="bench", settings={"k": 1}
        )
        assert records == [{"seed": 3, "value": 30}, {"seed": 1, "value": 10}]
    assert calls == [3, 1]  # the second pass reads both files
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "bench_seed1.json",
        "bench_seed3.json",
    ]
