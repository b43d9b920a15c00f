"""A plain (non-editable) install of the built wheel into a fresh venv gives a working
``sidyp-prod`` run from another directory."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def test_pip_install_then_help_from_another_directory(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Dependencies come from this environment (no network, no multi-GB torch download): a .pth
    # file exposes its site-packages; the project itself is built and installed for real.
    purelib = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    Path(purelib, "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("sidyp_prod-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=tmp_path)
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(["sidyp-prod", "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "refine" in result.stdout
    where = subprocess.check_output(
        [str(python), "-c", "import sidyp_prod.cli, sidyp_prod.export; print(sidyp_prod.__file__)"],
        cwd=elsewhere, text=True,
    )
    assert str(env_dir) in where, "imported the source tree instead of the installed package"
    assert sys.prefix not in where
