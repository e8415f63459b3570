"""mypy over the installed regionlock package, as `make lint` runs it: `python tools/typecheck.py [mypy options]`.

The editable install maps regionlock.core to core/, regionlock.service to service/ and the rest of regionlock to gen/
through setuptools' import hook, which mypy can't follow (it reads only path lines in .pth files), and no directory here
is named regionlock/ for mypy_path or explicit_package_bases to start from. So this asks the import system where each
package lives and hands mypy every module with its real name: a .pyi beside a .py, .pyx or extension wins, as on import.
Settings come from [tool.mypy] in pyproject.toml; the arguments are passed on to mypy.
"""

import importlib.util
import pathlib
import sys

from mypy import build
from mypy.errors import CompileError
from mypy.fscache import FileSystemCache
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = pathlib.Path(__file__).resolve().parent.parent
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


def main(args: list[str]) -> int:
    fscache = FileSystemCache()
    _, options = process_options(
        ["--config-file", str(ROOT / "pyproject.toml"), *args], require_targets=False, fscache=fscache
    )
    try:
        sources = [source for package in PACKAGES for source in package_sources(package)]
        result = build.build(sources, options, fscache=fscache)
        messages = result.errors
    except CompileError as error:
        messages = error.messages
    for message in messages:
        print(message)
    errors = sum(": error:" in message for message in messages)
    print(f"typecheck: {errors} errors" if errors else "typecheck: no issues")
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
