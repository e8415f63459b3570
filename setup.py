"""Build script: generates gRPC code from proto/ and compiles core/*.pyx with Cython."""

import os
import pathlib
import shutil
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "gen"
REQUIRE_EXTENSION = os.environ.get("REGIONLOCK_REQUIRE_EXTENSION") == "1"
SERVICE_PACKAGES = [
    "regionlock.service",
    "regionlock.service.overrides",
    "regionlock.service.server",
    "regionlock.service.server.check",
    "regionlock.service.server.admin",
    "regionlock.service.cli",
    "regionlock.service.loadtest",
]
PACKAGE_DOCS = {
    "regionlock": "regionlock: region-lock decisions for device gateways.",
    "regionlock/v1": "Generated from proto/regionlock/v1: the DeviceCheck API.",
    "regionlock/admin": "Generated from proto/regionlock/admin.",
    "regionlock/admin/v1": "Generated from proto/regionlock/admin/v1: the Admin API.",
}


def generate_protos() -> None:
    """Run protoc (grpcio-tools) over proto/ into gen/, the package root of regionlock."""
    import google.rpc.status_pb2  # googleapis-common-protos ships google/rpc/status.proto beside it
    import grpc_tools
    from grpc_tools import protoc

    google_site = pathlib.Path(google.rpc.status_pb2.__file__).resolve().parents[2]
    protobuf_include = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    for package, doc in PACKAGE_DOCS.items():
        (GEN_DIR / package).mkdir(parents=True, exist_ok=True)
        (GEN_DIR / package / "__init__.py").write_text(f'"""{doc}"""\n')
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{protobuf_include}",
        f"-I{google_site}",
        f"--python_out={GEN_DIR}",
        f"--pyi_out={GEN_DIR}",
        f"--grpc_python_out={GEN_DIR}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + " ".join(protos))


class OptionalBuildExt(build_ext):
    """Compile the Cython core; fall back to the pure-Python reference unless the extension is required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:
            if REQUIRE_EXTENSION:
                raise
            print(f"warning: regionlock.core extensions not built ({exc}); using the pure-Python core")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXTENSION:
                raise
            print(f"warning: {ext.name} not built ({exc})")


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSION:
            raise
        return []
    from setuptools import Extension

    # service/**/*.pyx cimport regionlock.core.geo and .allowlist, but the source tree maps that package to core/, so
    # no directory here has the regionlock/core/ shape Cython's include path needs: build/include gets one, copied
    # (not linked: a copy survives an sdist, a platform without symlinks and a renamed file) from core/ at every
    # build, as numpy's get_include() tree is. The .h files go along for the C compiler, and ship in the package.
    include_tree = ROOT / "build" / "include"
    core_include = include_tree / "regionlock" / "core"
    core_include.mkdir(parents=True, exist_ok=True)
    for package in ("regionlock", "regionlock/core"):
        (include_tree / package / "__init__.pxd").touch()
    wanted = {p.name: p for p in (ROOT / "core").iterdir() if p.suffix in (".pxd", ".h")}
    for stale in core_include.iterdir():
        if stale.name != "__init__.pxd" and (stale.name not in wanted or stale.is_symlink()):
            stale.unlink()
    for name, source in sorted(wanted.items()):
        target = core_include / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)  # copy2 keeps the mtime: Cython's dependency check stays true
    modules = [
        Extension(
            "regionlock." + ".".join(pyx.relative_to(ROOT).with_suffix("").parts),
            [str(pyx.relative_to(ROOT))],
            include_dirs=[str(core_include)],
            extra_compile_args=["-O3"],
        )
        for pyx in sorted((ROOT / "core").glob("*.pyx")) + sorted((ROOT / "service").rglob("*.pyx"))
    ]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={"embedsignature": True},
        include_path=[str(include_tree)],
        quiet=True,
    )


generate_protos()
setup(
    packages=[
        "regionlock",
        "regionlock.v1",
        "regionlock.admin",
        "regionlock.admin.v1",
        "regionlock.core",
        *SERVICE_PACKAGES,
    ],
    package_dir={
        "regionlock": "gen/regionlock",
        "regionlock.core": "core",
        **{package: package.removeprefix("regionlock.").replace(".", "/") for package in SERVICE_PACKAGES},
    },
    package_data={
        "regionlock.core": ["*.pyi", "*.pyx", "*.pxd", "*.h", "py.typed"],
        "regionlock.service": ["*.toml", "py.typed"],
        "regionlock.service.server.check": ["*.pyi"],
        "regionlock.v1": ["*.pyi"],
        "regionlock.admin.v1": ["*.pyi"],
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    zip_safe=False,
)
