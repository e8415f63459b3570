"""mypy and stubtest over the installed regionlock package, as `make lint` runs them: `python tools/typecheck.py`.

mypy checks every module at the strictness of [tool.mypy] in pyproject.toml; then stubtest holds the .pyi stub of
each compiled module (each .pyx of core/ and service/) to the compiled module's runtime signatures, with the
differences tools/stubtest-allowlist.txt justifies. Either failing fails the command.

The editable install maps regionlock.core to core/, regionlock.service to service/ and the rest of regionlock to gen/
through setuptools' import hook, which mypy can't follow (it reads only path lines in .pth files), and no directory here
is named regionlock/ for mypy_path or explicit_package_bases to start from. So this asks the import system where each
package lives and hands mypy every module with its real name: a .pyi beside a .py, .pyx or extension wins, as on import.
"""

import importlib.util
import pathlib
import sys

from mypy import build, stubtest
from mypy.errors import CompileError
from mypy.fscache import FileSystemCache
from mypy.main import process_options
from mypy.modulefinder import BuildSource
from mypy.options import Options

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
ALLOWLIST = ROOT / "tools" / "stubtest-allowlist.txt"
# each maps to its own directory (gen/regionlock, core, service), so each is walked from its own root
PACKAGES = ["regionlock", "regionlock.core", "regionlock.service"]


def package_sources(package: str) -> list[BuildSource]:
    """The modules of package and its subpackages, each once: the stub where there is one."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"typecheck: {package} is not an installed package (run make install)")
    sources = []
    for directory in map(pathlib.Path, spec.submodule_search_locations):
        for stem in sorted({p.stem for p in directory.glob("*.py")} | {p.stem for p in directory.glob("*.pyi")}):
            path = directory / f"{stem}.pyi"
            if not path.exists():
                path = directory / f"{stem}.py"
            module = package if stem == "__init__" else f"{package}.{stem}"
            sources.append(BuildSource(str(path), module, None, str(directory)))
        for child in sorted(p.name for p in directory.iterdir() if (p / "__init__.py").exists()):
            sources += package_sources(f"{package}.{child}")
    return sources


def typecheck(sources: list[BuildSource]) -> int:
    fscache = FileSystemCache()
    _, options = process_options(["--config-file", str(CONFIG)], require_targets=False, fscache=fscache)
    try:
        result = build.build(sources, options, fscache=fscache)
        messages = result.errors
    except CompileError as error:
        messages = error.messages
    for message in messages:
        print(message)
    errors = sum(": error:" in message for message in messages)
    print(f"typecheck: {errors} errors" if errors else "typecheck: no issues")
    return 1 if errors else 0


def compiled_modules(sources: list[BuildSource]) -> list[str]:
    """The modules built from a .pyx (each must have its .pyi stub beside it), package by package."""
    stubs = {source.path for source in sources}
    modules = []
    for package in (source for source in sources if source.path and source.path.endswith("__init__.py")):
        for pyx in sorted(pathlib.Path(package.path or "").parent.glob("*.pyx")):
            if str(pyx.with_suffix(".pyi")) not in stubs:
                raise SystemExit(f"typecheck: {pyx} has no .pyi stub beside it")
            modules.append(f"{package.module}.{pyx.stem}")
    return modules


def run_stubtest(sources: list[BuildSource]) -> int:
    """stubtest over the compiled modules. Its own module search can't see the editable install either, so the
    stubs it compares come from a mypy build of the same sources as above (its build_stubs, given them)."""

    def build_stubs(modules: list[str], options: Options, find_submodules: bool = False) -> list[str]:
        try:
            result = build.build(sources, options)
        except CompileError as error:
            raise stubtest.StubtestFailure("failed mypy compile:\n" + "\n".join(error.messages)) from error
        # result.errors: the type errors the mypy run above has reported already
        stubtest._all_stubs = result.files
        return modules

    stubtest.build_stubs = build_stubs
    args = ["--mypy-config-file", str(CONFIG), "--allowlist", str(ALLOWLIST), *compiled_modules(sources)]
    return stubtest.test_stubs(stubtest.parse_options(args))


def main() -> int:
    sources = [source for package in PACKAGES for source in package_sources(package)]
    status = typecheck(sources)
    return run_stubtest(sources) or status


if __name__ == "__main__":
    sys.exit(main())
