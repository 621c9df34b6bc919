"""The tests mirror the source tree and share code through one place.

Every folder under tests/ holds the tests of one source folder (``reforge/``, ``frontend/``, ``passes/``,
``topi_ext/``, ``autotune/`` as pyproject maps them, and ``benchmarks/``), or is one of SUITES, which check the whole
compiler rather than one package; top-level test modules are repository-wide checks (TOP_LEVEL). A module under
tests/ imports from tests/ only SHARED (tests/helpers.py, the test zoo, the OpenCL emulation, a suite's own models),
never a test module or a conftest: code two test files need lives in tests/helpers.py, fixtures in the conftest.py
of the folder they serve (pytest hands them to the tests below it by name).
"""

from __future__ import annotations

import ast
import glob
import os
import tomllib

import pytest

from tests import helpers
from tests.helpers import ROOT

TESTS = os.path.join(ROOT, "tests")
SUITES = {
    "fuzz": "differential fuzzing: random graphs through every pass configuration against onnxruntime (make fuzz)",
    "blocked": "the blocked layout end to end, one CNN family's distinctive block per test",
}
TOP_LEVEL = {
    "test_docs.py": "the README, docs/ and benchmarks/results/ hold together",
    "test_tree.py": "this file: the layout of tests/ itself",
}
SHARED = {"tests.helpers", "tests.zoo", "tests.opencl_emulation", "tests.blocked.families", "tests.fuzz.differential",
          "tests.fuzz.graphs"}
MODULES = sorted(glob.glob(os.path.join(TESTS, "**", "*.py"), recursive=True))


def source_folders() -> set[str]:
    """The repository's source folders: the package directories pyproject installs, and benchmarks/."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {os.path.normpath(d) for d in package_dir.values()} | {"benchmarks"}


def imports_from_tests(source: str, package: str) -> set[str]:
    """The modules under ``tests`` that ``source``, a module of ``package``, imports, relative imports resolved
    (``from .. import zoo`` in tests.passes is ``tests.zoo``)."""
    found, parts = set(), package.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tests"}
        elif isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            if module.split(".")[0] != "tests":
                continue
            # ``from tests import zoo`` names a module; ``from tests.helpers import ROOT`` a module's attribute
            found |= {f"{module}.{a.name}" for a in node.names} if module == "tests" else {module}
    return found


def module_imports(path: str) -> set[str]:
    """:func:`imports_from_tests` of the file at ``path`` under tests/."""
    with open(path, encoding="utf-8") as f:
        return imports_from_tests(f.read(), os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, "."))


def test_imports_from_tests_resolve():
    code = ("from .. import zoo\nfrom .conftest import h\nfrom .families import m\nfrom tests.helpers import ROOT\n"
            "import tests.fuzz.graphs\nimport reforge\nfrom reforge.passes import registry\n")
    assert imports_from_tests(code, "tests.passes") == {"tests.zoo", "tests.passes.conftest", "tests.passes.families",
                                                        "tests.helpers", "tests.fuzz.graphs"}
    assert module_imports(__file__) == {"tests.helpers"}


def test_every_folder_mirrors_a_source_folder_or_is_a_suite():
    folders = {d for d in os.listdir(TESTS) if os.path.isdir(os.path.join(TESTS, d)) and d != "__pycache__"}
    stray = folders - source_folders() - set(SUITES)
    assert not stray, f"tests/{sorted(stray)[0]}/ mirrors no source folder (and is no suite in SUITES)"
    for d in folders:  # a package: its test modules' names are unique however pytest imports them
        assert os.path.exists(os.path.join(TESTS, d, "__init__.py")), f"tests/{d}/ has no __init__.py"


def test_top_level_test_modules_are_repository_wide_checks():
    top = {os.path.basename(p) for p in glob.glob(os.path.join(TESTS, "test_*.py"))}
    assert top == set(TOP_LEVEL), f"move {sorted(top - set(TOP_LEVEL))} into the folder of the package they test"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: os.path.relpath(p, TESTS))
def test_imports_only_shared_modules_from_tests(path):
    wrong = module_imports(path) - SHARED
    assert not wrong, (f"tests/{os.path.relpath(path, TESTS)} imports {sorted(wrong)}: move what it needs into "
                       "tests/helpers.py (a fixture: into the conftest.py above both)")


def test_helpers_are_public_and_documented():
    names = [n for n, v in vars(helpers).items() if getattr(v, "__module__", None) == helpers.__name__]
    assert names
    assert not [n for n in names if n.startswith("_")], "a shared helper has a public name"
    assert not [n for n in names if not (getattr(helpers, n).__doc__ or "").strip()], "every helper says what it is"
