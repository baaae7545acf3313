"""Loading models and tokenizers: dtype names, the pickle / remote-code policy of one command, model-folder
checks with one-line errors, and whether two folders hold the same kind of model.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mox_unlearn.errors import MoxError, first_line
from mox_unlearn.io.folders import INDEX_NAME, SINGLE_NAME
from mox_unlearn.io.reading import read_tensor_infos

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str, *, auto: bool = False) -> torch.dtype | str:
    """A dtype by name; "auto" (the checkpoint's own dtype) only where `auto` allows it."""
    valid = ["auto", *DTYPES] if auto else list(DTYPES)
    if name not in valid:
        raise MoxError(f"unknown dtype {name!r}; valid: {', '.join(valid)}")
    return "auto" if name == "auto" else DTYPES[name]


@dataclass
class LoadPolicy:
    """What model loading may do with files it did not write: set once per command from its flags.

    Pickle checkpoints (pytorch_model*.bin) can run code when unpickled and a model's own Python code
    (`trust_remote_code`) always does, so both stay off unless the user passes --allow-pickle or
    --trust-remote-code. A process-wide setting, so that every load in the command (the training loop,
    the evaluation) obeys the command line without each caller passing the flags along.
    """

    allow_pickle: bool = False
    trust_remote_code: bool = False


_POLICY = LoadPolicy()


@contextmanager
def load_policy(*, allow_pickle: bool = False, trust_remote_code: bool = False) -> Iterator[LoadPolicy]:
    """Set the `LoadPolicy` for the duration of a command; the safe defaults come back afterwards."""
    global _POLICY
    before = _POLICY
    _POLICY = LoadPolicy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        yield _POLICY
    finally:
        _POLICY = before


def looks_like_path(name: str) -> bool:
    """True when `name` is to be read as a local path rather than a hub id such as "org/model": it exists,
    starts with / . ~, ends with /, has more than one /, a backslash, or its parent folder exists here
    (`runs/tiny-modle` with a local runs/: a typo is refused at once instead of becoming a hub lookup)."""
    path = Path(name).expanduser()
    return (
        path.exists()
        or name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or "\\" in name
        or (name.count("/") == 1 and path.parent.is_dir())
    )


def check_model_folder(
    folder: Path, *, role: str = "model", contents: bool = True, hub: bool = True, allow_pickle: bool | None = None
) -> None:
    """Refuse a model folder `from_pretrained` would fail on, or fail on late, before any work starts.

    Checks: it is a folder with a config.json; with `contents`, config.json is a JSON object with a
    model_type and the weights are complete safetensors (every header readable and the file as long as
    the header says, so a truncated copy is caught here rather than by a deserialisation error mid-run),
    or pickle weights only when allowed. `role` names the folder in the error (model, --ref, ...); `hub`:
    the name could have been a hub id, so a missing folder says why it was read as a path.
    """
    folder = Path(folder)
    allow_pickle = _POLICY.allow_pickle if allow_pickle is None else allow_pickle
    if not folder.exists():
        hint = f" (read as a local path because {folder.parent}/ exists here)" if hub and folder.parent.is_dir() else ""
        raise MoxError(f"{role} folder not found: {folder}{hint}")
    if not folder.is_dir():
        raise MoxError(f"{role} path {folder} is not a folder; expected a Hugging Face model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise MoxError(f"{role} folder {folder} has no config.json; expected a Hugging Face model folder")
    if not contents:
        return
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise MoxError(f"cannot read {config}: {e}") from None
    except json.JSONDecodeError as e:
        raise MoxError(f"{config}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise MoxError(f'{config} has no "model_type"; expected the config of a Hugging Face model')
    if not _has_safetensors(folder) and any(folder.glob("pytorch_model*.bin")):
        if allow_pickle:
            return  # transformers reads them with torch.load(weights_only=True)
        raise MoxError(
            f"model folder {folder} has only pickle weights (pytorch_model*.bin), which can run code when "
            "loaded; pass --allow-pickle to load them anyway (with torch.load(weights_only=True)) or re-save "
            "them as safetensors"
        )
    read_tensor_infos(folder)


def _has_safetensors(folder: Path) -> bool:
    return (folder / SINGLE_NAME).is_file() or (folder / INDEX_NAME).is_file()


# config.json keys that decide a model's tensors and how they are used: equal in two models we combine.
ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


def check_same_model_kind(ref: Path, mem: Path) -> None:
    """Refuse two folders whose configs name different architectures, sizes or vocabularies.

    Tensor names and shapes are compared elsewhere; this catches what they cannot (two architectures
    with the same tensor layout, e.g. Llama and Mistral) and says which setting differs, naming both folders.
    """
    configs = {}
    for role, folder in (("--ref", ref), ("--mem", mem)):
        try:
            configs[role] = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return  # a missing or unreadable config is reported by the folder checks
    a, b = configs["--ref"], configs["--mem"]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return
    for key in ARCHITECTURE_KEYS:  # only keys both have: configs of other transformers versions omit defaults
        if key in a and key in b and a[key] != b[key]:
            what = "vocabularies" if key == "vocab_size" else "architectures"
            raise MoxError(
                f"--ref {ref} and --mem {mem} have different {what} ({key} {a[key]!r} vs {b[key]!r}); "
                "extrapolation needs the same model"
            )


ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_ATTENTION_PACKAGE = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def check_attn_implementation(name: str | None) -> None:
    """None (transformers' choice: sdpa where the architecture has it, else eager), or a known attention
    implementation whose package is installed; else a one-line error before any model loads."""
    if name is None:
        return
    if name not in ATTENTION:
        raise MoxError(f"attn_implementation must be one of {', '.join(ATTENTION)}, got {name!r}")
    package = _ATTENTION_PACKAGE.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise MoxError(f"attn_implementation={name} needs the {package} package (and a CUDA GPU); it is not installed")


def load_model(
    name: str,
    dtype: torch.dtype | str,
    *,
    allow_pickle: bool | None = None,
    trust_remote_code: bool | None = None,
    attn_implementation: str | None = None,
    device_map: str | None = None,
):
    """`AutoModelForCausalLM` from a folder or hub id; a failure is one line naming the model.

    Safetensors only unless pickle weights are allowed (then read with torch.load(weights_only=True));
    the model's own code only with trust_remote_code. Both default to the command's `LoadPolicy`.
    `attn_implementation` (see check_attn_implementation) and `device_map` (e.g. "auto": layers spread
    over the GPUs and CPU by accelerate, for evaluating a model larger than one device) go to transformers.
    """
    check_attn_implementation(attn_implementation)
    extra = {k: v for k, v in (("attn_implementation", attn_implementation), ("device_map", device_map)) if v}
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    allow_pickle = _POLICY.allow_pickle if allow_pickle is None else allow_pickle
    trust_remote_code = _POLICY.trust_remote_code if trust_remote_code is None else trust_remote_code
    if looks_like_path(str(name)):
        check_model_folder(Path(name).expanduser(), allow_pickle=allow_pickle)
    else:
        check_hub_reachable(str(name))
    hf_logging.disable_progress_bar()  # our own bars report progress; per-load weight bars are noise
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report: check_loading_info says it in one line
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            weights_only=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported by check_loading_info, which refuses them
            **extra,
        )
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise MoxError(f"cannot load model {name!r}: {first_line(e)}{_not_local(name)}") from None
    except SafetensorError as e:
        raise MoxError(f"cannot load model {name!r}: corrupted safetensors weights: {first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(name, info)
    return model


def check_loading_info(name: str, info: dict[str, Any]) -> None:
    """Refuse a model whose weights do not fit its config.json: transformers would start the missing
    tensors random, drop the extra ones and (told to) re-initialise the mismatched ones, and unlearning
    that model would mean nothing. `info` is from_pretrained's output_loading_info."""
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: str(m[0]))
    if mismatched:
        key, *shapes = mismatched[0]
        sizes = f" ({' in the weights, '.join(str(list(s)) for s in shapes[:2])} in config.json)" if shapes else ""
        raise MoxError(
            f"the weights of {name} do not fit its config.json: {key}{sizes}, {len(mismatched)} tensor(s) in "
            "all; the folder mixes two models"
        )
    for kind, what in (
        ("missing_keys", "its config.json needs but the weights lack"),
        ("unexpected_keys", "the weights hold but its config.json does not use"),
    ):
        keys = sorted(info.get(kind) or [])
        if keys:
            raise MoxError(
                f"model {name}: {len(keys)} tensor(s) {what} (first: {keys[0]}); config.json and the weights "
                "are from different models"
            )


def check_fits(name: str, tokenizer, longest: int | None = None) -> None:
    """Before any weights load: refuse a tokenizer that makes token ids beyond the model's embedding table,
    and (`longest`: the longest encoded example) sequences beyond the positions the model has. Both would
    otherwise fail mid-run as an IndexError, or run silently where the model never was trained."""
    from transformers import AutoConfig

    trust = _POLICY.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust)
    except (OSError, ValueError, KeyError) as e:
        raise MoxError(f"cannot read the config of {name!r}: {first_line(e)}{_not_local(name)}") from None
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise MoxError(
            f"the tokenizer of {name} has {len(tokenizer)} tokens but the model's vocab_size is {rows}: token "
            "ids beyond its embedding table would fail; use the tokenizer the model was trained with"
        )
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if longest is not None and isinstance(positions, int) and longest > positions:
        raise MoxError(
            f"an encoded example is {longest} tokens, beyond the {positions} positions of {name}; "
            f"lower max_length to {positions} or less"
        )


def load_tokenizer(name: str, *, trust_remote_code: bool | None = None):
    """The model's tokenizer, given a pad token if it has none (see `ensure_pad_token`)."""
    from transformers import AutoTokenizer

    from mox_unlearn.data.formatting import ensure_pad_token

    trust_remote_code = _POLICY.trust_remote_code if trust_remote_code is None else trust_remote_code
    if looks_like_path(str(name)) and not Path(name).expanduser().is_dir():
        raise MoxError(f"model folder not found: {name}")
    if not looks_like_path(str(name)):
        check_hub_reachable(str(name))
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MoxError(f"cannot load tokenizer of {name!r}: {first_line(e)}{_not_local(name)}") from None
    ensure_pad_token(tok)
    return tok


_HUB_ANSWERED: set[tuple[str, str]] = set()


def check_hub_reachable(name: str, timeout: float = 5.0, repo_type: str = "model") -> None:
    """Before a hub id is handed to transformers or datasets: where it is not in the local cache and the hub
    does not answer (no network, a proxy, a wrong HF_ENDPOINT), a one-line error at once, instead of half a
    minute to a minute of retries with backoff. Offline mode (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 for a
    dataset) and cached repositories are left to the library. `repo_type` is "model" or "dataset"."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_session

    offline = constants.HF_HUB_OFFLINE or (repo_type == "dataset" and _datasets_offline())
    probe = "config.json" if repo_type == "model" else "README.md"  # a dataset's card is its first download
    if (
        (name, repo_type) in _HUB_ANSWERED
        or offline
        or isinstance(try_to_load_from_cache(name, probe, repo_type=repo_type), str)
    ):
        return
    try:
        get_session().head(f"{constants.ENDPOINT}/api/{repo_type}s/{name}", timeout=timeout)
        _HUB_ANSWERED.add((name, repo_type))  # the tokenizer, the model and the reference load one name: ask once
    except Exception as e:  # noqa: BLE001 - httpx / requests / OSError: the hub cannot be reached
        what = "local folder" if repo_type == "model" else "local file or folder"
        offline_var = "HF_HUB_OFFLINE=1" if repo_type == "model" else "HF_DATASETS_OFFLINE=1"
        raise MoxError(
            f"{name!r} is not a {what} and the Hugging Face hub cannot be reached ({type(e).__name__}: "
            f"{first_line(e)}); pass a {what}, or check the network ({offline_var} uses the cache)"
        ) from None


def _datasets_offline() -> bool:
    try:
        from datasets import config
    except ImportError:
        return False
    return bool(getattr(config, "HF_DATASETS_OFFLINE", False) or getattr(config, "HF_HUB_OFFLINE", False))


def _not_local(name: str) -> str:
    """A hint for a name that was taken for a hub id: often a local folder that does not exist (a typo)."""
    return "" if Path(name).expanduser().exists() else " (and there is no local folder of that name)"
