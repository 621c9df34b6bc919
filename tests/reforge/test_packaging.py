"""Every source package is in pyproject's package list, so a wheel (not only an editable install) holds it."""

import os
import tomllib

from tests.helpers import ROOT


def test_every_source_package_is_listed():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    found = set()
    for name, folder in dirs.items():
        for dirpath, subdirs, files in os.walk(os.path.join(ROOT, folder)):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
                found.add(name if rel == "." else f"{name}.{rel.replace(os.sep, '.')}")
    assert found - listed == set(), f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert "reforge.topi_ext.schedules" in found and "reforge.backends" in found
