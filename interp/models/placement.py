"""Where a model goes: one device, or a placement accelerate makes (`device_map`, `max_memory`,
`offload_folder`), and bitsandbytes quantization: every argument checked before anything loads, turned into
the keywords of HF `from_pretrained`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch


def default_device() -> torch.device:
    """`cuda` when a GPU is available, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | torch.device | None, argument: str = "device") -> torch.device:
    """`device` as a torch.device (None: CUDA when there is one, else the CPU), or a one-line error
    naming `argument` when it is malformed or not on this machine."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{argument}: expected a device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{argument}: {str(device)!r} was asked for, but this torch ({torch.__version__}) sees no CUDA device")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"{argument}: {str(device)!r} was asked for, but there are {count} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{argument}: 'mps' was asked for, but this machine has no MPS device")
    return resolved


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
QUANTIZATIONS = ("8bit", "4bit")
DeviceMap = str | dict[str, int | str | torch.device]


def placement(
    device: str | torch.device | None, dtype: torch.dtype, device_map: DeviceMap | None = None,
    max_memory: dict[int | str, int | str] | None = None, offload_folder: str | Path | None = None,
    quantization: str | None = None,
) -> dict[str, Any]:
    """The placement keywords for HF `from_pretrained` (accelerate places the model), each argument checked.

    Empty when the model goes to one device (`device`) and is moved there after loading. Errors name the
    argument and say what was expected.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point torch.dtype such as torch.bfloat16, got {dtype!r}")
    if quantization is not None:
        _check_bitsandbytes(quantization)
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            given = "max_memory" if max_memory is not None else "offload_folder"
            raise ValueError(f"{given}: only used with a device_map (e.g. device_map='auto'), which was not given")
        if quantization is None:
            return {}
        device = check_device(device)
        if device.type != "cuda":
            raise ValueError(f"quantization: needs CUDA and bitsandbytes; the model would go to {str(device)!r}")
        device_map = {"": device.index or 0}
    elif device is not None:
        raise ValueError(
            "device, device_map: give one of them: device puts the whole model on one device, device_map lets "
            f"accelerate split it over several (got device={device!r} and a device_map)"
        )
    checked = _checked_device_map(device_map)
    kwargs: dict[str, Any] = {"device_map": checked}
    if max_memory is not None:
        kwargs["max_memory"] = _checked_max_memory(max_memory, checked)
    targets = set(checked.values()) if isinstance(checked, dict) else set()
    if offload_folder is not None:
        kwargs["offload_folder"] = str(_checked_offload_folder(offload_folder))
    elif "disk" in targets:
        raise ValueError("offload_folder: device_map puts modules on 'disk'; give a folder for their weights")
    if quantization is not None:
        kwargs["quantization_config"] = _bitsandbytes_config(quantization, dtype, targets)
    return kwargs


def _checked_device_map(device_map: Any) -> DeviceMap:
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ValueError(
                f"device_map: expected one of {DEVICE_MAP_STRATEGIES} or a dict of module name -> device, "
                f"got {device_map!r}"
            )
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise ValueError(
            "device_map: expected a strategy ('auto', ...) or a non-empty dict of module name -> device "
            f"(a GPU index, 'cuda:1', 'cpu' or 'disk'), got {device_map!r}"
        )
    checked: dict[str, int | str] = {}
    for name, target in device_map.items():
        argument = f"device_map[{name!r}]"
        if not isinstance(name, str):
            raise ValueError(f"device_map: keys are module names such as 'model.layers.3', got {name!r}")
        if target == "disk":
            checked[name] = target
        elif target == "meta":
            raise ValueError(f"{argument}: 'meta' holds no weights; use 'disk' (with offload_folder) to offload them")
        elif isinstance(target, int) and not isinstance(target, bool):
            checked[name] = check_device(torch.device("cuda", target), argument).index
        elif isinstance(target, (str, torch.device)):
            device = check_device(target, argument)
            checked[name] = (device.index or 0) if device.type == "cuda" else str(device)
        else:
            raise ValueError(f"{argument}: expected a GPU index, 'cuda:N', 'cpu', 'mps' or 'disk', got {target!r}")
    return checked


def _checked_max_memory(max_memory: Any, device_map: DeviceMap) -> dict[int | str, int | str]:
    from accelerate.utils import convert_file_size_to_int

    if not isinstance(device_map, str):
        raise ValueError(
            "max_memory: only used when accelerate chooses the placement (device_map='auto', 'balanced', "
            "'balanced_low_0' or 'sequential'), not with an explicit device_map dict"
        )
    if not isinstance(max_memory, dict) or not max_memory:
        raise ValueError(f"max_memory: expected a dict such as {{0: '20GiB', 'cpu': '64GiB'}}, got {max_memory!r}")
    for key, budget in max_memory.items():
        if not (isinstance(key, int) and not isinstance(key, bool) and key >= 0) and key not in ("cpu", "mps"):
            raise ValueError(f"max_memory: keys are GPU indices (0, 1, ...), 'cpu' or 'mps', got {key!r}")
        try:
            valid = isinstance(budget, (int, str)) and not isinstance(budget, bool) and convert_file_size_to_int(budget) >= 0
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise ValueError(f"max_memory[{key!r}]: expected a size in bytes or a string such as '20GiB', got {budget!r}")
    return dict(max_memory)


OFFLOAD_FILES = ("index.json",)  # with one .dat file per offloaded weight: what accelerate writes


def _checked_offload_folder(folder: str | Path) -> Path:
    """The offload folder: new, empty, or one accelerate wrote before (its files are replaced); anything
    else is refused, so loading never overwrites a user's files."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"offload_folder: {path} is a file; give a new or empty folder")
    if path.is_dir():
        foreign = [item.name for item in path.iterdir() if item.name not in OFFLOAD_FILES and item.suffix != ".dat"]
        if foreign:
            raise ValueError(
                f"offload_folder: {path} holds other files ({', '.join(sorted(foreign)[:3])}, ...); give a new or empty "
                "folder (accelerate writes index.json and one .dat file per offloaded weight there)"
            )
    return path


def _check_bitsandbytes(quantization: Any) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: expected one of {QUANTIZATIONS} (bitsandbytes) or None, got {quantization!r}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"quantization: needs CUDA and bitsandbytes; this torch ({torch.__version__}) sees no CUDA device"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("quantization: needs CUDA and bitsandbytes, which is not installed (pip install bitsandbytes)")


def _bitsandbytes_config(quantization: str, dtype: torch.dtype, targets: set[Any]) -> Any:
    if "disk" in targets:
        raise ValueError("quantization: bitsandbytes weights cannot be offloaded to 'disk'; use GPUs (and 'cpu')")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        # CPU entries of the map stay in float (bitsandbytes quantizes GPU weights only).
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload="cpu" in targets)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
