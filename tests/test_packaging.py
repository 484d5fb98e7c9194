"""A regular (non-editable) install works: the wheel carries the bundled data, the shipped SAEs and
`py.typed`, and the README's quick start runs from it in a new virtualenv, from another folder, on the README's
CPU-only install path (torch's CPU build, then the package)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_readme import quick_start_code

ROOT = Path(__file__).resolve().parents[1]
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"

CHECKS = '''
import interp, interp.datasets, interp.dictionaries, torch
print("INTERP_FILE", interp.__file__)
print("TORCH_CUDA", torch.version.cuda)
print("PAIRS", len(interp.datasets.load_bundled_sycophancy("train")))
print("SAE_WIDTH", interp.dictionaries.load_shipped_dictionary("smollm2-135m-instruct").n_atoms)
'''


def cpu_install_commands() -> list[str]:
    """The commands of the README's CPU-only install block, in order."""
    block = re.search(r"\*\*CPU only\*\*.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_readme_installs_torchs_cpu_build_before_the_package():
    commands = cpu_install_commands()
    assert commands[:2] == [CPU_TORCH, "pip install ."]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.integration
@pytest.mark.packaging
def test_the_wheel_installs_and_runs_the_quick_start_from_another_folder(smollm, tmp_path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)])
    wheel = next(wheels.glob("interp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"interp/py.typed", "interp/data/sycophancy_ab_train.jsonl", "interp/data/harmful_train.json"} <= names
    assert any(name.startswith("interp/data/saes/") and name.endswith("sae_weights.safetensors") for name in names)

    # A new virtualenv with the wheel; its dependencies are this environment's (a plain path in a .pth
    # file: this environment's own .pth files, which hold the editable install, are not processed).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    # The README's CPU path: torch's CPU build (this environment's, reached through the .pth file below: no second
    # download), then the README's own package command with the wheel for "." (offline: no index, no deps).
    import torch

    torch_command, package_command = cpu_install_commands()[:2]
    assert torch_command == CPU_TORCH and torch.version.cuda is None, f"not the CPU build: torch {torch.__version__}"
    pip, install, target = package_command.split()
    assert (pip, install, target) == ("pip", "install", ".")
    run([str(python), "-m", pip, install, str(wheel), "-q", "--no-deps", "--no-index"])
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "parent_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "quick_start.py"
    script.write_text(quick_start_code() + CHECKS)
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "INTERP_DATA_DIR")}
    output = run([str(python), str(script)], cwd=elsewhere, env=environment, timeout=600).stdout
    interp_file = next(line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("INTERP_FILE"))
    assert Path(interp_file).resolve().is_relative_to(venv.resolve()), interp_file
    assert "PAIRS 234" in output and "SAE_WIDTH 4608" in output
    assert "TORCH_CUDA None" in output  # the quick start ran on the CPU build
    assert (elsewhere / "results" / "my_direction" / "direction.safetensors").is_file()
