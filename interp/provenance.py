"""How a result was made: package versions, the git commit of interp's source, the machine, and the exact
command that runs the experiment again.

`run_provenance(name, config, out_dir)` is recorded in every `result.json` (`"provenance"`) when the run
ends; `provenance_html(rows)` is the report's "How this was made" block. A result written before this was
recorded shows this machine at report time instead, and says so.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import os
import platform
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("interp", "torch", "transformers", "transformer-lens", "sae-lens")
NOT_GIT = "not a git checkout"
FLAGS = ("model", "device")  # fields the CLI takes as --model / --device
UNSET = ("progress",)  # fields that change how a run looks, not what it computes


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each package ("not installed" where it is absent)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_commit(folder: str | Path | None = None) -> str:
    """The commit of the git checkout holding `folder` (default: interp's source), with "+ uncommitted changes"
    when its tracked files differ; `NOT_GIT` outside a checkout (an installed wheel) or without git."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return NOT_GIT
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return NOT_GIT
    return commit.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """CPU name and cores, the GPUs torch sees (if any), the OS and Python."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "gpu": ", ".join(gpus) or "none",
            "platform": platform.platform(), "python": platform.python_version()}


def setting_text(value: Any) -> str:
    """A config value as `--set KEY=VALUE` reads it back (`interp.experiments.parse_settings`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(setting_text(item) for item in value)
    return str(value)


def rerun_command(name: str, config: Mapping[str, Any], out_dir: str | Path, defaults: Mapping[str, Any] | None = None) -> str:
    """`interp reproduce NAME [--model M] [--device D] [--set KEY=VALUE ...] --out DIR`: every field of `config`
    that differs from `defaults` (every field when None: this module knows no experiment), so the command runs
    the same config."""
    defaults = {} if defaults is None else defaults
    parts = ["interp", "reproduce", name]
    changed = {key: value for key, value in config.items()
               if key not in UNSET and _comparable(value) != _comparable(defaults.get(key, _MISSING))}
    for key in FLAGS:
        if key in changed and changed[key] is not None:
            parts += [f"--{key}", setting_text(changed.pop(key))]
    for key, value in changed.items():
        parts += ["--set", f"{key}={setting_text(value)}"]
    parts += ["--out", str(out_dir)]
    return shlex.join(parts)


_MISSING = object()


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def run_provenance(name: str, config: Any, out_dir: str | Path) -> dict[str, Any]:
    """What `result.json` records of how it was made (JSON-ready)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    defaults = dataclasses.asdict(type(config)()) if dataclasses.is_dataclass(config) else None
    return {"versions": package_versions(), "commit": git_commit(), "machine": machine(),
            "command": rerun_command(name, values, out_dir, defaults),
            "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _machine_text(info: Mapping[str, Any]) -> str:
    return (f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores; GPU: {info.get('gpu', 'none')}; "
            f"{info.get('platform', '?')}, Python {info.get('python', '?')}")


def provenance_html(rows: Sequence[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None]], out_dir: str | Path) -> str:
    """The report's "How this was made" block; `rows`: (experiment, its recorded provenance or None, its config)."""
    here: dict[str, Any] | None = None
    parts = ['<h2 id="how-this-was-made">How this was made</h2>',
             "<p>Each experiment's package versions, the git commit of interp's source, the machine it ran on, and "
             "the command that runs it again into this folder.</p>"]
    for name, recorded, config in rows:
        info = dict(recorded) if isinstance(recorded, Mapping) else {}
        note = ""
        if not {"versions", "commit", "machine"} <= set(info):
            here = here or {"versions": package_versions(), "commit": git_commit(), "machine": machine()}
            info = {**here, **info}
            note = ('<p class="warn">not recorded by this run (result.json has no provenance): versions, commit and '
                    "machine are this machine's at report time.</p>")
        command = info.get("command")
        if not isinstance(command, str):
            try:
                command = rerun_command(name, config or {}, out_dir) if isinstance(config, Mapping) else None
            except Exception:  # an experiment no longer registered, a config it cannot build: say so, never fail
                command = None
        versions = info.get("versions") if isinstance(info.get("versions"), Mapping) else {}
        cells = [("command", f"<code>{_e(command)}</code>" if command else "unknown (no config recorded)"),
                 *[(package, _e(versions.get(package, "?"))) for package in PACKAGES],
                 ("git commit", f"<code>{_e(info.get('commit', '?'))}</code>"),
                 ("machine", _e(_machine_text(info.get("machine") or {}))),
                 ("finished", _e(info.get("finished", "?")))]
        parts.append(f'<h3 id="made-{_e(name)}">{_e(name)}</h3>{note}<table class="provenance">'
                     + "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in cells) + "</table>")
    return "\n".join(parts)
