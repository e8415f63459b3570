"""The rooms of the source tree (DESIGN.md) and the one-way flow between them, read from the source with ast.

core <- domain (service/ top-level modules, overrides/) <- loadtest <- server <- cli: a module imports only
from its own room or a room below it; core imports nothing of the service, grpc or protobuf; the domain no
grpc or protobuf; and no modules import each other in a circle. Every import counts: at module level, in a
function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"core": "regionlock.core", "service": "regionlock.service"}  # folder -> package it is imported as
RANKS = {"core": 0, "domain": 1, "loadtest": 2, "server": 3, "cli": 4}
# the wire: the generated code of proto/ and the gRPC and protobuf runtimes
WIRE = ("grpc", "grpc_status", "grpc_health", "grpc_reflection", "google.protobuf", "google.rpc")
WIRE += ("regionlock.v1", "regionlock.admin")
_PYX_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+c?import[ \t]+\(?([\w., \t]*)|c?import[ \t]+([\w.]+))", re.MULTILINE
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported (resolved: a submodule named by `from package import name` is that module)
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def room(module: str) -> str | None:
    """The room of a module of the tree; None for anything else (third party, generated, stdlib)."""
    if module == "regionlock.core" or module.startswith("regionlock.core."):
        return "core"
    for sub in ("server", "cli", "loadtest"):
        prefix = f"regionlock.service.{sub}"
        if module == prefix or module.startswith(prefix + "."):
            return sub
    if module == "regionlock.service" or module.startswith("regionlock.service."):
        return "domain"
    return None


def is_wire(module: str) -> bool:
    return any(module == w or module.startswith(w + ".") for w in WIRE)


def modules_of(root: Path) -> dict[str, Path]:
    """Module name -> file, for the .py and .pyx files under root's source folders."""
    found: dict[str, Path] = {}
    for folder, package in SOURCES.items():
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path], root: Path) -> list[Import]:
    text = path.read_text(encoding="utf-8")
    where = str(path.relative_to(root))
    names: list[tuple[str, int]] = []
    if path.suffix == ".pyx":  # Cython: cimports and imports by line, as ast can't read it
        for match in _PYX_IMPORT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if match.group(3):
                names.append((match.group(3), line))
                continue
            for alias in match.group(2).split(","):
                sub = f"{match.group(1)}.{alias.split()[0]}" if alias.split() else match.group(1)
                names.append((sub if sub in known else match.group(1), line))
    else:
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                names += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    names.append((sub if sub in known else base, node.lineno))
    return [Import(module, name, f"{where}:{line}") for name, line in names]


def violations(root: Path) -> list[str]:
    """Every import of the tree that breaks a rule, and every circle, each as one line naming the import."""
    known = modules_of(root)
    imports = [imp for module, path in known.items() for imp in imports_of(module, path, known, root)]
    found: list[str] = []
    for imp in imports:
        source_room, target_room = room(imp.source), room(imp.target)
        if source_room == "core" and (is_wire(imp.target) or target_room not in (None, "core")):
            found.append(f"{imp}: core imports nothing of the service, grpc or protobuf")
        elif source_room == "domain" and is_wire(imp.target):
            found.append(f"{imp}: the domain imports no grpc or protobuf (that is server/ or loadtest/)")
        elif source_room and target_room and RANKS[target_room] > RANKS[source_room]:
            found.append(f"{imp}: {source_room} imports {target_room}, a room above it ({' <- '.join(RANKS)})")
    found += [f"import circle: {' -> '.join(str(imp) for imp in cycle)}" for cycle in circles(imports, known)]
    return found


def circles(imports: list[Import], known: dict[str, Path]) -> list[list[Import]]:
    """One circle through each group of modules that import each other (a strongly connected component)."""
    edges: dict[str, dict[str, Import]] = {module: {} for module in known}
    for imp in imports:
        if imp.target in known and imp.target != imp.source:
            edges[imp.source].setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan; the tree is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    found = []
    for component in components:
        members, start = set(component), min(component)
        path, seen, node = [], {start}, start
        while True:  # walk inside the component until a module repeats: that stretch is a circle
            nxt = min(n for n in edges[node] if n in members)
            path.append(edges[node][nxt])
            if nxt in seen:
                first = next(i for i, imp in enumerate(path) if imp.source == nxt)
                found.append(path[first:])
                break
            seen.add(nxt)
            node = nxt
    return found


def test_the_source_tree_keeps_the_rooms_and_has_no_circles():
    found = violations(ROOT)
    assert not found, "imports against DESIGN.md's rules:\n" + "\n".join(found)


def test_every_package_says_what_it_is():
    for init in sorted([*(ROOT / "core").rglob("__init__.py"), *(ROOT / "service").rglob("__init__.py")]):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) == 1, f"{init.relative_to(ROOT)}: a one-line docstring"


# --- the checker itself, on small trees with one planted violation each ------------------------------------------

TREE = {
    "core/__init__.py": '"""core."""\n',
    "core/geo.py": "import struct\n",
    "service/__init__.py": '"""domain."""\n',
    "service/decision.py": "from regionlock.core import geo\n",
    "service/overrides/__init__.py": '"""overrides."""\n',
    "service/overrides/store.py": "from regionlock.service import decision\n",
    "service/loadtest/__init__.py": '"""loadtest."""\n',
    "service/loadtest/model.py": "import grpc\nfrom regionlock.service.decision import x\n",
    "service/server/__init__.py": '"""server."""\n',
    "service/server/edge.py": "import grpc\nfrom regionlock.v1 import device_check_pb2\n",
    "service/server/check/__init__.py": '"""check."""\n',
    "service/server/check/servicer.py": "from .. import edge\nfrom regionlock.service.overrides import store\n",
    "service/server/check/kernel.pyx": "from regionlock.core.geo cimport lookup\n",
    "service/cli/__init__.py": '"""cli."""\n',
    "service/cli/main.py": "def main():\n    from regionlock.service.server import edge\n",
}


def write_tree(root: Path, extra: dict[str, str]) -> Path:
    for name, text in {**TREE, **extra}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_the_checker_passes_a_clean_tree(tmp_path):
    assert violations(write_tree(tmp_path, {})) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (
            {"core/geo.py": "import struct\nimport grpc\n"},
            "core/geo.py:2: regionlock.core.geo imports grpc: core imports nothing of the service",
        ),
        (
            {"core/geo.py": "def f():\n    from regionlock.service import decision\n"},
            "core/geo.py:2: regionlock.core.geo imports regionlock.service.decision: core imports nothing",
        ),
        (
            {"service/decision.py": "from google.protobuf import timestamp_pb2\n"},
            "service/decision.py:1: regionlock.service.decision imports google.protobuf: the domain imports no grpc",
        ),
        (
            {"service/overrides/store.py": "from regionlock.v1 import device_check_pb2 as pb\n"},
            "service/overrides/store.py:1: regionlock.service.overrides.store imports regionlock.v1: the domain",
        ),
        (
            {
                "service/decision.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                + "    from .server import edge"
            },
            "service/decision.py:3: regionlock.service.decision imports regionlock.service.server.edge: "
            "domain imports server, a room above it",
        ),
        (
            {"service/loadtest/model.py": "from regionlock.service.server.check import servicer\n"},
            "regionlock.service.loadtest.model imports regionlock.service.server.check.servicer: "
            "loadtest imports server, a room above it",
        ),
        (
            {"service/server/edge.py": "def f():\n    from regionlock.service.cli.main import main\n"},
            "service/server/edge.py:2: regionlock.service.server.edge imports regionlock.service.cli.main: "
            "server imports cli",
        ),
        (
            {"service/overrides/store.py": "def open_store():\n    from regionlock.service.server.check import kernel"},
            "regionlock.service.overrides.store imports regionlock.service.server.check.kernel: domain imports server",
        ),
        (
            # a circle closed by a function-level import, the way they hide
            {"service/decision.py": "from regionlock.core import geo\ndef f():\n    from .overrides import store\n"},
            "import circle: service/decision.py:3: regionlock.service.decision imports "
            "regionlock.service.overrides.store -> service/overrides/store.py:1: "
            "regionlock.service.overrides.store imports regionlock.service.decision",
        ),
        (
            {
                "service/server/check/servicer.py": "from . import kernel\n",
                "service/server/check/kernel.pyx": "from regionlock.service.server.check.servicer cimport x\n",
            },
            "import circle: service/server/check/kernel.pyx:1: regionlock.service.server.check.kernel imports "
            "regionlock.service.server.check.servicer -> service/server/check/servicer.py:1:",
        ),
    ],
)
def test_the_checker_names_a_planted_violation(tmp_path, planted, expected):
    found = violations(write_tree(tmp_path, planted))
    assert any(expected in line for line in found), "\n".join(found)
