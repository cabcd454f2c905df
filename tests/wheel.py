"""The project's wheel installed in a temporary virtual environment, run outside the checkout.

The wheel is built from a copy of the source tree (so parallel workers never share a build
folder) and installed with ``--no-deps --no-index``: its own files are all the venv holds of
the project. The third-party packages it depends on come from the project's .venv through a
``.pth`` line (a plain path: the .venv's own ``.pth`` files, the editable install among them,
are not processed), since tests may not fetch packages. Commands run with a temporary
working directory, so nothing of the checkout is on ``sys.path``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "covidct", "training", "export", "serving", "rollout"]
SOURCES += ["gateway", "bench", "cli"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    venv: Path
    workdir: Path  # an empty folder outside the checkout: every command runs here

    def run(self, *args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        """``covidct ARGS`` from the installed wheel, in ``workdir``."""
        return subprocess.run(
            [str(self.venv / "bin" / "covidct"), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.workdir,
        )


def install_wheel(tmp: Path) -> InstalledWheel:
    src, dist, venv, workdir = tmp / "src", tmp / "dist", tmp / "venv", tmp / "work"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORE)
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip"]
    for cmd in (
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
    ):
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("covidct-*.whl")
    install = ["install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), *install],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    deps = sysconfig.get_paths()["purelib"]
    (site / "site-packages" / "project-dependencies.pth").write_text(deps + "\n")
    workdir.mkdir()
    return InstalledWheel(wheel, venv, workdir)
