"""Generates the gRPC stubs from the repository's proto/ into src/chatkpi/v1 before packaging.

The stubs are not checked in: the proto is the source of truth, and a build of this package
from the repository always matches the server it sits next to.
"""
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "src"


def generate_stubs():
    from grpc_tools import protoc  # a build requirement (pyproject.toml)
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "chatkpi" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO}: build from a chatkpi checkout")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={OUT}",
            f"--pyi_out={OUT}", f"--grpc_python_out={OUT}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in (OUT / "chatkpi", OUT / "chatkpi" / "v1"):
        (package / "__init__.py").touch()


class BuildWithStubs(build_py):
    def run(self):
        generate_stubs()
        # Packages were listed before the stubs existed: list them again.
        self.packages = sorted(set(self.packages or []) | {"chatkpi", "chatkpi.v1"})
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
