"""The package list of pyproject.toml names every subpackage of fastae (else a wheel silently
lacks it), and every module imports (optional dependencies missing -> only the modules that need
them fail, with ModuleNotFoundError naming one of them)."""

import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

import fastae

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
OPTIONAL = {"ray", "pyarrow", "webdataset", "pillow_heif", "pillow_jxl", "pytorch_msssim", "scipy", "constriction",
            "triton", "hypothesis", "pytest", "pytest_benchmark"}


@pytest.mark.skipif(not PYPROJECT.is_file(), reason="not a checkout")
def test_pyproject_lists_every_subpackage():
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    package_dir = setuptools.get("package-dir", {})
    found = {"fastae"} | {"fastae." + ".".join(p.parent.relative_to(ROOT / "fastae").parts)
                          for p in (ROOT / "fastae").rglob("__init__.py") if p.parent != ROOT / "fastae"}
    found = {f for f in found if "__pycache__" not in f and f != "fastae.kernels"}  # a link in some checkouts
    found |= {name for name in package_dir}  # packages that live elsewhere (kernels/)
    assert found <= listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"
    assert listed <= found, f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"


def test_every_module_imports():
    failed = {}
    for info in pkgutil.walk_packages(fastae.__path__, "fastae."):
        if info.name.endswith("__main__"):  # runs the CLI
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in OPTIONAL:
                failed[info.name] = repr(e)
        except Exception as e:  # noqa: BLE001 - any other failure is a bug
            failed[info.name] = repr(e)
    assert not failed, failed
