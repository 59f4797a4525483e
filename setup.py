"""Build step: compile the rules engine's hot modules to C extensions with mypyc.

The engine is pure, strictly typed Python. So mypyc can compile the modules
it spends its time in to C extensions with the same interface, and the
Python sources ship beside them. In process, the compiled engine takes
about 40% less time per event (docs/benchmarks.md, "Compiled rules engine").

The compiled modules are built only for a regular (non-editable) install.
An editable install keeps the engine pure Python, so that an edited source
takes effect without a rebuild. TAGGER_COMPILE=0 also keeps it pure. When
mypyc or the C compiler fails, the build prints why (pip shows it with -v)
and installs the pure sources alone. `tagger.rules.engine_build()` returns
which one runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The installed package path of each source folder, as in pyproject.toml.
PACKAGE_DIRS = {
    "src/tagger": "tagger",
    "rules": "tagger/rules",
    "schemas": "tagger/schemas",
    "streams": "tagger/streams",
}
# The modules the engine spends its time in, per profile. Every module they
# import stays Python and is called through its normal interface.
COMPILED = (
    "rules/aggregates.py",
    "rules/engine.py",
    "rules/evaluate.py",
    "rules/expression.py",
    "rules/state.py",
)
# The name of the shared library that contains the compiled modules' code.
GROUP = "tagger_engine"
# pip runs this file once per build step. Only the steps that build the
# package need the C sources, so the metadata steps (egg_info, dist_info)
# skip mypyc, which takes seconds each time.
BUILD_COMMANDS = frozenset({"bdist_wheel", "build", "build_ext", "install", "editable_wheel"})


def _stage(staging: Path) -> list[str]:
    """Copy the sources into the installed package's layout and return the paths to compile.

    mypyc names a module after its folders, so `rules/engine.py` must sit at
    `tagger/rules/engine.py` to become `tagger.rules.engine`.
    """
    shutil.rmtree(staging, ignore_errors=True)
    for source, target in PACKAGE_DIRS.items():
        for path in (ROOT / source).glob("*.py"):
            destination = staging / target / path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
    compiled = []
    for path in COMPILED:
        folder, name = path.split("/")
        compiled.append(str(staging / PACKAGE_DIRS[folder] / name))
    return compiled


class MypycBuildExt(build_ext):
    """Compile COMPILED with mypyc, or, when that fails, leave the pure sources to run."""

    def finalize_options(self) -> None:
        # The extensions must exist before setuptools finalizes them.
        self._failure: str | None = None
        reason = self._skip_reason()
        if reason is not None:
            if reason != "metadata step":
                print(f"tagger: rules engine stays pure Python ({reason})", file=sys.stderr)
            self.distribution.ext_modules = []
        else:
            try:
                self.distribution.ext_modules = self._generate()
            except (Exception, SystemExit) as exc:
                # mypyc reports its own errors with sys.exit.
                self._failure = repr(exc)
                self.distribution.ext_modules = []
        super().finalize_options()

    def run(self) -> None:
        if self._failure is not None:
            self._remove_stale_extensions()
            self._fall_back(self._failure)
            return
        if not self.extensions:
            self._remove_stale_extensions()
            return
        try:
            super().run()
        except (Exception, SystemExit) as exc:
            self._remove_outputs()
            self._fall_back(repr(exc))
            return
        print(f"tagger: rules engine compiled with mypyc ({len(COMPILED)} modules)")

    def _skip_reason(self) -> str | None:
        if BUILD_COMMANDS.isdisjoint(sys.argv[1:]):
            return "metadata step"
        if os.environ.get("TAGGER_COMPILE", "1") == "0":
            return "TAGGER_COMPILE=0"
        if "editable_wheel" in sys.argv[1:] or self.inplace:
            return "editable install"
        return None

    def _generate(self) -> list[Any]:
        """Write the C sources of COMPILED and return their extensions."""
        from mypyc.build import mypycify

        build_temp = Path(self.build_temp or "build/temp").resolve()
        staging = build_temp / "mypyc-src"
        compiled = _stage(staging)
        # The build environment has no third-party packages or their stubs, so
        # their values are typed Any in the compiled code.
        options = ["--ignore-missing-imports", "--follow-imports=silent"]
        cwd = Path.cwd()
        os.chdir(staging)
        try:
            extensions = mypycify(
                [*options, *(os.path.relpath(path, staging) for path in compiled)],
                opt_level="3",
                group_name=GROUP,
                target_dir=str(build_temp / "mypyc-c"),
            )
        finally:
            os.chdir(cwd)
        for extension in extensions:
            extension.sources = [str(staging / source) for source in extension.sources]
        return list(extensions)

    def _fall_back(self, reason: str) -> None:
        print(
            "tagger: mypyc build failed, so the rules engine stays pure Python "
            f"(it needs a C compiler and the Python headers): {reason}",
            file=sys.stderr,
        )

    def _remove_stale_extensions(self) -> None:
        """Delete the compiled modules an earlier build left in the build folder.

        Setuptools packs whatever that folder holds, so a pure build in a
        checkout that was once compiled would otherwise ship the old extensions.
        """
        build_lib = Path(self.build_lib)
        names = [build_lib / f"{GROUP}__mypyc"]
        for path in COMPILED:
            folder, name = path.split("/")
            names.append(build_lib / PACKAGE_DIRS[folder] / Path(name).stem)
        stale = [
            Path(f"{name}{suffix}")
            for name in names
            for suffix in EXTENSION_SUFFIXES
            if Path(f"{name}{suffix}").exists()
        ]
        for found in stale:
            found.unlink()
        if stale:
            print(f"tagger: removed {len(stale)} compiled modules of an earlier build")

    def _remove_outputs(self) -> None:
        for output in self.get_outputs():
            Path(output).unlink(missing_ok=True)


class PlatformDistribution(Distribution):
    """A distribution with C extensions, whose list is known only when build_ext runs."""

    def has_ext_modules(self) -> bool:
        return True


def _cmdclass() -> dict[str, Any]:
    return {"build_ext": MypycBuildExt}


setup(distclass=PlatformDistribution, cmdclass=_cmdclass())
