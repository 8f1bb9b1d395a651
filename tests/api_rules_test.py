"""The public API's shape rules, checked on the sources with `ast` (nothing is imported).

"Public functions: at most two positional arguments, the rest keyword-only." Checked on
every public module of `larq_cwr` (a file whose name does not start with `_`, or an
`__init__.py`), and on what such a module re-exports from a private one (`ImageDataset`
from `datasets/_dataset.py`):

- module-level functions, public methods of public classes and public classes'
  `__init__` take at most two positional parameters (`self`/`cls` not counted; a
  `*args` forwarded to a base class, as `HybridQuantizedTrainStep`'s to `keras.Model`,
  is not counted);
- a public dataclass takes at most two of its fields positionally: one with more
  fields is `kw_only=True` (or puts the rest after `_: dataclasses.KW_ONLY`).
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "larq_cwr"
MAX_POSITIONAL = 2


def _is_public_module(path: pathlib.Path) -> bool:
    parts = path.relative_to(PACKAGE.parent).parts
    return not any(p.startswith("_") and p != "__init__.py" for p in parts)


PUBLIC_MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _is_public_module(p))


def _parse(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _decorator_names(node: ast.FunctionDef | ast.ClassDef) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute):
            names.add(target.attr)
        elif isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _positional(function: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list:
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    if method and "staticmethod" not in _decorator_names(function):
        params = params[1:]  # self / cls
    return params


def _dataclass_call(node: ast.ClassDef) -> ast.expr | None:
    """The class's `@dataclass` / `@dataclasses.dataclass(...)` decorator, if any."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = getattr(target, "attr", getattr(target, "id", None))
        if name == "dataclass":
            return decorator
    return None


def _keyword_constant(call: ast.expr, name: str):
    """The constant a call passes as keyword `name` (None if it passes none)."""
    keywords = call.keywords if isinstance(call, ast.Call) else []
    for k in keywords:
        if k.arg == name and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def _positional_fields(node: ast.ClassDef, decorator: ast.expr) -> list[str]:
    """Fields a dataclass's `__init__` takes positionally."""
    if _keyword_constant(decorator, "kw_only") is True:
        return []
    fields = []
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        if not isinstance(statement.target, ast.Name):
            continue
        annotation = ast.unparse(statement.annotation)
        if annotation.endswith("KW_ONLY"):
            break  # every field after the sentinel is keyword-only
        if "ClassVar" in annotation:
            continue
        value = statement.value
        if (
            isinstance(value, ast.Call)
            and getattr(value.func, "attr", getattr(value.func, "id", None)) == "field"
        ):
            if _keyword_constant(value, "kw_only") is True:
                continue
            if _keyword_constant(value, "init") is False:
                continue
        fields.append(statement.target.id)
    return fields


def violations(tree: ast.Module, only: set[str] | None = None) -> list[str]:
    """Breaches of the rules by the public definitions of a module's `tree` (or by the
    names in `only`, public or not)."""

    def wanted(name: str) -> bool:
        return name in only if only is not None else not name.startswith("_")

    found = []

    def check(function, qualname: str, method: bool) -> None:
        params = _positional(function, method)
        if len(params) > MAX_POSITIONAL:
            found.append(
                f"{qualname}({', '.join(params)}): {len(params)} positional parameters, "
                f"at most {MAX_POSITIONAL} (make the rest keyword-only)"
            )

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and wanted(node.name):
            check(node, node.name, method=False)
        elif isinstance(node, ast.ClassDef) and wanted(node.name):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if item.name == "__init__" or not item.name.startswith("_"):
                    check(item, f"{node.name}.{item.name}", method=True)
            decorator = _dataclass_call(node)
            if decorator is not None:
                fields = _positional_fields(node, decorator)
                if len(fields) > MAX_POSITIONAL:
                    found.append(
                        f"dataclass {node.name}({', '.join(fields)}): {len(fields)} "
                        f"positional fields, at most {MAX_POSITIONAL} (use kw_only=True)"
                    )
    return found


def _all_names(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return None


def _reexports(path: pathlib.Path) -> dict[pathlib.Path, set[str]]:
    """Names the module at `path` imports from private `larq_cwr` modules and lists in
    its `__all__` (a helper it only uses is not part of its API)."""
    tree = _parse(path)
    exported = _all_names(tree) or set()
    found: dict[pathlib.Path, set[str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "larq_cwr":
            continue
        source = PACKAGE.joinpath(*parts[1:]).with_suffix(".py")
        if not source.is_file() or _is_public_module(source):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) in exported:
                found.setdefault(source, set()).add(alias.name)
    return found


def test_the_public_modules_are_found():
    names = {str(p.relative_to(PACKAGE)) for p in PUBLIC_MODULES}
    assert {"__init__.py", "scenarios.py", "datasets/__init__.py", "cli.py"} <= names
    assert not {"_checks.py", "datasets/_cache.py", "datasets/_dataset.py"} & names


@pytest.mark.parametrize(
    "path", PUBLIC_MODULES, ids=[str(p.relative_to(PACKAGE)) for p in PUBLIC_MODULES]
)
def test_public_api_takes_at_most_two_positional_arguments(path):
    found = violations(_parse(path))
    for source, names in sorted(_reexports(path).items()):
        found += [f"{source.name}: {v}" for v in violations(_parse(source), only=names)]
    assert not found, "\n".join(found)


def test_reexported_private_definitions_are_checked():
    reexports = _reexports(PACKAGE / "datasets" / "__init__.py")
    assert "ImageDataset" in reexports[PACKAGE / "datasets" / "_dataset.py"]


def test_the_checker_flags_what_breaks_the_rules():
    source = textwrap.dedent("""
        import dataclasses
        from dataclasses import KW_ONLY, dataclass, field

        def ok(a, b=1, *, c): ...
        def bad(a, b, c=None): ...
        def _private(a, b, c): ...
        async def bad_async(a, /, b, c): ...

        class Public:
            def __init__(self, a, b, c): ...
            def method(self, a, b, *, c): ...
            def bad_method(self, a, b, c): ...
            @classmethod
            def factory(cls, a, b): ...
            @staticmethod
            def bad_static(a, b, c): ...
            def _helper(self, a, b, c): ...

        class _Private:
            def method(self, a, b, c): ...

        @dataclasses.dataclass(frozen=True)
        class BadData:
            a: int
            b: int
            c: int = 0

        @dataclasses.dataclass(frozen=True, kw_only=True)
        class KwData:
            a: int
            b: int
            c: int

        @dataclass
        class SentinelData:
            a: int
            b: int
            _: KW_ONLY
            c: int
            d: int

        @dataclass
        class FieldData:
            a: int
            b: int
            c: int = field(default=0, kw_only=True)
            d: int = field(default=0, init=False)
        """)
    found = violations(ast.parse(source))
    assert [v.split("(")[0] for v in found] == [
        "bad",
        "bad_async",
        "Public.__init__",
        "Public.bad_method",
        "Public.bad_static",
        "dataclass BadData",
    ], found
