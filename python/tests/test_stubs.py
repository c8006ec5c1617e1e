"""`tinyllama/_core.pyi` declares exactly what the built extension exposes.

Names both ways (module level and per class), the kind of each (class / function / exception,
method / property), the exception hierarchy, and every signature's parameter names and defaults
(pyo3 publishes them as `__text_signature__`). mypy checks the stub when it is installed.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllama import _core

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "tinyllama" / "_core.pyi"


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


@pytest.fixture(scope="module")
def stub() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    """Names the stub declares at module level (imports excluded)."""
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node
    return out


def _stub_classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _is_property(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)


def _class_members(cls: ast.ClassDef) -> dict[str, str]:
    """Members a stub class declares in its body: name -> "method" or "property"."""
    out: dict[str, str] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = "property" if _is_property(node) else "method"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = "property"
    return out


def _runtime_public() -> set[str]:
    """The module's public names: everything without a leading underscore, plus `__all__`'s names
    (which brings in `__version__`)."""
    return {n for n in dir(_core) if not n.startswith("_")} | set(_core.__all__)


def _builtin_base(cls: type) -> type:
    """The nearest base class not defined by the extension (object for pyclasses, Exception for the
    exceptions): what it inherits from there is not the stub's business."""
    return next(b for b in cls.__mro__ if b.__module__ == "builtins")


def _runtime_members(cls: type) -> dict[str, str]:
    """Public members a runtime class adds over its builtin base: name -> "method" or "property"."""
    inherited = set(dir(_builtin_base(cls)))
    out: dict[str, str] = {}
    for name in dir(cls):
        if name in inherited or name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        out[name] = "property" if inspect.isdatadescriptor(attr) else "method"
    return out


def test_module_names_match(stub):
    declared = _top_level(stub)
    assert "__all__" in declared, "the stub declares __all__"
    stub_names = set(declared) - {"__all__"}
    runtime = _runtime_public()
    assert runtime - stub_names == set(), "exposed by tinyllama._core but missing from _core.pyi"
    assert stub_names - runtime == set(), "declared in _core.pyi but not exposed by tinyllama._core"


def test_all_matches(stub):
    node = _top_level(stub)["__all__"]
    assert isinstance(node, ast.Assign)
    stub_all = ast.literal_eval(node.value)
    assert sorted(stub_all) == sorted(_core.__all__)


def test_kinds_and_exception_hierarchy(stub):
    declared = _top_level(stub)
    for name in _runtime_public() & set(declared):  # missing names: test_module_names_match
        obj = getattr(_core, name)
        node = declared[name]
        if isinstance(obj, type):
            assert isinstance(node, ast.ClassDef), f"{name} is a class at run time"
            stub_bases = [ast.unparse(b) for b in node.bases]
            runtime_base = obj.__bases__[0]
            if runtime_base is object:
                assert stub_bases == [], f"{name}: stub bases {stub_bases}, runtime has none"
            else:
                assert stub_bases == [runtime_base.__name__], f"{name}: stub bases {stub_bases}"
        elif callable(obj):
            assert isinstance(node, ast.FunctionDef), f"{name} is a function at run time"
        else:
            assert isinstance(node, (ast.AnnAssign, ast.Assign)), f"{name} is a constant at run time"


def test_class_members_match(stub):
    classes = _stub_classes(stub)
    runtime_classes = {n: getattr(_core, n) for n in _runtime_public() if isinstance(getattr(_core, n), type)}
    assert set(runtime_classes) == set(classes)
    for name, cls in runtime_classes.items():
        runtime = _runtime_members(cls)
        declared = {k: v for k, v in _class_members(classes[name]).items() if not _is_dunder(k)}
        assert set(runtime) - set(declared) == set(), f"{name}: members missing from the stub"
        assert set(declared) - set(runtime) == set(), f"{name}: stub members not on the runtime class"
        for member, kind in runtime.items():
            assert declared[member] == kind, f"{name}.{member} is a {kind} at run time"


def _stub_params(fn: ast.FunctionDef, *, method: bool) -> list[tuple[str, object]]:
    """(name, default) of each parameter; default is `inspect.Parameter.empty` when there is none."""
    args = fn.args
    assert not args.posonlyargs and not args.kwonlyargs and args.vararg is None and args.kwarg is None
    params = args.args[1:] if method else args.args
    defaults: list[object] = [inspect.Parameter.empty] * (len(params) - len(args.defaults))
    defaults += [ast.literal_eval(d) for d in args.defaults]
    return [(p.arg, d) for p, d in zip(params, defaults)]


def _runtime_params(sig: inspect.Signature, *, method: bool) -> list[tuple[str, object]]:
    params = list(sig.parameters.values())
    if method:
        assert params and params[0].name == "self"
        params = params[1:]
    return [(p.name, p.default) for p in params]


def _same(stub_params: list[tuple[str, object]], runtime_params: list[tuple[str, object]], where: str) -> None:
    assert [n for n, _ in stub_params] == [n for n, _ in runtime_params], f"{where}: parameter names"
    for (name, stub_default), (_, runtime_default) in zip(stub_params, runtime_params):
        if runtime_default is Ellipsis:  # pyo3 writes `...` for a default it cannot render (`64 << 20`)
            assert stub_default is not inspect.Parameter.empty, f"{where}: {name} has a default"
        else:
            assert stub_default == runtime_default, f"{where}: default of {name}"


def test_signatures_match(stub):
    declared = _top_level(stub)
    for name in _runtime_public() & set(declared):  # missing names: test_module_names_match
        obj = getattr(_core, name)
        node = declared[name]
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            members = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
            # pyo3's #[new] is `__new__`; without one the class is not constructible from Python.
            assert "__init__" not in members, f"{name}: pyo3 constructors are __new__, not __init__"
            if obj.__text_signature__ is None:
                assert "__new__" not in members, f"{name} has no constructor at run time"
            else:
                assert "__new__" in members, f"{name}: the stub lacks the constructor"
                _same(_stub_params(members["__new__"], method=True),
                      _runtime_params(inspect.signature(obj), method=False), f"{name}()")
            for member, kind in _runtime_members(obj).items():
                if kind == "method" and member in members:  # missing members: test_class_members_match
                    sig = inspect.signature(inspect.getattr_static(obj, member))
                    _same(_stub_params(members[member], method=True), _runtime_params(sig, method=True),
                          f"{name}.{member}")
        elif callable(obj) and not isinstance(obj, type):
            _same(_stub_params(node, method=False), _runtime_params(inspect.signature(obj), method=False), name)


def test_mypy_accepts_stub():
    pytest.importorskip("mypy")  # a dev extra: required under CI (conftest.py)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", str(STUB)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
