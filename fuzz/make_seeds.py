#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (checked in; rerun after changing them).

    python3 fuzz/make_seeds.py

Needs only the Python standard library and protoc (protobuf-compiler): request seeds are
written as text format here and encoded with `protoc --encode`, so no generated _pb2 modules
are needed. Existing seed files of the same names are overwritten; others are left alone.
"""
import json
import os
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


# ---- config_fuzzer: config.json text ----------------------------------------------------------

def config_seeds():
    t = "config_fuzzer"
    write(t, "brown-moe.json", read("models/brown-moe/config.json"))
    write(t, "tiny-odd.json", read("models/tiny-odd/config.json"))
    minimal = {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_local_experts": 4,
               "num_experts_per_tok": 2, "vocab_size": 32}
    write(t, "minimal.json", json.dumps(minimal))
    write(t, "head_dim.json", json.dumps(dict(minimal, head_dim=32, num_key_value_heads=2,
                                              tie_word_embeddings=True, rope_scaling=None)))
    # Valid, with sizes near the top of the range the parser allows ([0, 2^31)).
    write(t, "large_sizes.json", json.dumps(dict(minimal, hidden_size=1000000000, num_attention_heads=2,
                                                 num_hidden_layers=1, intermediate_size=3,
                                                 vocab_size=1000, max_position_embeddings=2147483647)))
    write(t, "large_head_dim.json", json.dumps(dict(minimal, head_dim=100000000)))
    write(t, "bad_model_type.json", json.dumps(dict(minimal, model_type="llama")))
    write(t, "bad_sliding_window.json", json.dumps(dict(minimal, sliding_window=4096)))
    write(t, "bad_kv_heads.json", json.dumps(dict(minimal, num_key_value_heads=3)))
    write(t, "bad_top_k.json", json.dumps(dict(minimal, num_experts_per_tok=5)))
    write(t, "bad_eps.json", json.dumps(dict(minimal, rms_norm_eps=-1, hidden_act="gelu")))
    write(t, "bad_range.json", json.dumps(dict(minimal, hidden_size=2**31, bos_token_id=-1)))
    write(t, "not_json.json", '{"model_type": "mixtral",')
    write(t, "array.json", "[1, 2, 3]")


# ---- placement_fuzzer: placement file text ----------------------------------------------------

def placement_seeds():
    t = "placement_fuzzer"
    # docs/parallelism.md and coordinator/placement_test.cc (brown-moe: 4 layers, 8 experts).
    write(t, "docs_example.json", '{\n  "ep": 2, "pp": 2,\n  "stages": [[0, 2], [2, 4]],\n'
          '  "experts": {"0": [0], "1": [1, 0], "2": [0]},\n  "layer_experts": {"3": {"5": [1]}}\n}\n')
    write(t, "replicas.json", '{"experts": {"0": [0, 1]}}')
    write(t, "stages_3_1.json", '{"ep": 2, "pp": 2, "stages": [[0, 3], [3, 4]]}')
    write(t, "layer_experts.json", '{"layer_experts": {"3": {"1": [1], "6": [1], "7": [0, 1]}}}')
    write(t, "ep4.json", '{"ep": 4, "pp": 1, "experts": {"0": [3, 2, 1, 0], "7": [0]}}')
    write(t, "tiny_odd_2x3.json", '{"ep": 2, "pp": 3, "stages": [[0, 1], [1, 2], [2, 3]], '
          '"experts": {"5": [0, 1]}, "layer_experts": {"2": {"0": [1]}}}')
    write(t, "empty_object.json", "{}")
    write(t, "bad_overlap.json", '{"stages": [[0, 2], [1, 4]]}')
    write(t, "bad_unknown_key.json", '{"expert": {}}')
    write(t, "bad_rank_dup.json", '{"experts": {"1": [1, 1]}}')
    write(t, "bad_id.json", '{"experts": {"01": [0]}, "layer_experts": {"-1": {}}}')
    write(t, "bad_json.json", '{"ep": 2,')


# ---- safetensors_fuzzer: a .safetensors file, or an index ('{' first) ---------------------------

def safetensors(header, data, pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


# The fixed shards fuzz/safetensors_fuzzer.cc places beside an index (same bytes).
SHARD1 = safetensors({"__metadata__": {"format": "pt"},
                      "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}}, b"\x01" * 20)


def safetensors_seeds():
    t = "safetensors_fuzzer"
    write(t, "fixed_shard1.safetensors", SHARD1)
    write(t, "one_tensor.safetensors",
          safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8))
    write(t, "three_dtypes.safetensors", safetensors(
        {"__metadata__": {"format": "pt"},
         "x": {"dtype": "BF16", "shape": [1, 4], "data_offsets": [0, 8]},
         "y": {"dtype": "F16", "shape": [2], "data_offsets": [8, 12]},
         "z": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
         "e": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]}}, b"\x3f" * 16))
    # Real tensor names (tiny-odd's second shard) with small shapes: a realistic header.
    real = read("models/tiny-odd/model-00002-of-00002.safetensors")
    (n,) = struct.unpack("<Q", real[:8])
    names = [k for k in json.loads(real[8:8 + n]) if k != "__metadata__"]
    header, off = {}, 0
    for name in names:
        header[name] = {"dtype": "BF16", "shape": [2, 3], "data_offsets": [off, off + 12]}
        off += 12
    write(t, "tiny_odd_names.safetensors", safetensors(header, b"\0" * off))
    # The real header of tiny-odd's first shard, its data cut off: offsets past the end.
    real1 = read("models/tiny-odd/model-00001-of-00002.safetensors")
    (n1,) = struct.unpack("<Q", real1[:8])
    write(t, "bad_real_header_no_data.safetensors", real1[:8 + n1])
    write(t, "bad_overlap.safetensors", safetensors(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12))
    write(t, "bad_misaligned.safetensors", safetensors(
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, pad=False))
    write(t, "bad_dtype_shape.safetensors", safetensors(
        {"a": {"dtype": "I8", "shape": [-1], "data_offsets": [0, 1]},
         "b": {"dtype": "BF16", "shape": [2**62, 4], "data_offsets": [0, 0]}}, b"\0"))
    write(t, "bad_header_length.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
    write(t, "bad_truncated.safetensors", b"\x02\0\0\0")

    # Indexes. Shard 2 is always the fixed one (tensors c, empty).
    index = {"metadata": {"total_size": 28},
             "weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00001-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}}
    write(t, "index.json", json.dumps(index, indent=2))
    # Index, NUL, then the bytes of shard 1.
    index_custom = {"weight_map": {"q": "model-00001-of-00002.safetensors",
                                   "c": "model-00002-of-00002.safetensors"}}
    write(t, "index_with_shard1.bin", json.dumps(index_custom).encode() + b"\0" + safetensors(
        {"q": {"dtype": "F16", "shape": [3, 1], "data_offsets": [0, 6]}}, b"\x11" * 6))
    write(t, "bad_index_duplicate.bin", json.dumps(index_custom).encode() + b"\0" + safetensors(
        {"q": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
         "c": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}}, b"\x11" * 4))
    write(t, "bad_index_real_tiny_odd.json", read("models/tiny-odd/model.safetensors.index.json"))
    write(t, "bad_index_missing_shard.json",
          json.dumps({"weight_map": {"a": "model-00003-of-00003.safetensors"}}))
    write(t, "bad_index_empty.json", '{"weight_map": {}}')
    write(t, "bad_index_not_name.json", '{"weight_map": {"a": 7, "b": ""}}')


# ---- request_fuzzer: selector byte + serialized message ---------------------------------------

def encode(message, proto, text):
    out = subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--encode=" + message, proto],
                         input=text.encode(), stdout=subprocess.PIPE, check=True)
    return out.stdout


def request_seeds():
    t = "request_fuzzer"
    v1 = lambda text: encode("switchyard.v1.GenerateRequest", "switchyard/v1/switchyard.proto", text)
    ks = lambda text: encode("inference.ModelInferRequest", "kserve/grpc_predict_v2.proto", text)
    # Byte 0: bit 0 = 0 switchyard.v1, 1 KServe; bit 1 = tight limits.
    write(t, "v1_token_ids.bin", b"\x00" + v1(
        'model: "brown-moe" token_ids: [1, 415, 2, 4095] max_tokens: 16 temperature: 0.7 '
        'top_k: 40 top_p: 0.9 seed: 1234 ignore_eos: true'))
    write(t, "v1_text_stop.bin", b"\x00" + v1(
        'text: "The jury said that" max_tokens: 20 stop: ["\\n", "."]'))
    write(t, "v1_tight.bin", b"\x02" + v1('token_ids: [1, 2, 3] max_tokens: 1 stop: ["abcde"]'))
    write(t, "v1_bad_values.bin", b"\x00" + v1(
        'model: "other" token_ids: [-1, 4096] max_tokens: 0 temperature: -1 top_k: -2 top_p: 1.5'))
    write(t, "v1_max_tokens_context.bin", b"\x00" + v1('token_ids: [1] max_tokens: 1024'))
    write(t, "v1_empty.bin", b"\x00")
    write(t, "kserve_contents.bin", b"\x01" + ks(
        'model_name: "brown-moe" model_version: "1" id: "req-1" '
        'inputs { name: "text_input" datatype: "BYTES" shape: [1] '
        '  contents { bytes_contents: "The jury said" } } '
        'outputs { name: "text_output" } '
        'parameters { key: "max_tokens" value { int64_param: 16 } } '
        'parameters { key: "temperature" value { double_param: 0.5 } } '
        'parameters { key: "top_k" value { uint64_param: 8 } } '
        'parameters { key: "top_p" value { int64_param: 1 } } '
        'parameters { key: "seed" value { uint64_param: 18446744073709551615 } } '
        'parameters { key: "stop" value { string_param: "." } }'))
    write(t, "kserve_raw.bin", b"\x03" + ks(
        'inputs { name: "text_input" datatype: "BYTES" shape: [1] } '
        'raw_input_contents: "\\005\\000\\000\\000hello"'))
    write(t, "kserve_bad_raw.bin", b"\x01" + ks(
        'inputs { name: "text_input" datatype: "BYTES" shape: [1, 1] } '
        'raw_input_contents: "\\377\\377\\377\\377x" raw_input_contents: "ab"'))
    write(t, "kserve_bad_params.bin", b"\x01" + ks(
        'model_name: "x" model_version: "2" '
        'inputs { name: "text_input" datatype: "FP32" shape: [2] } '
        'parameters { key: "max_tokens" value { uint64_param: 9223372036854775808 } } '
        'parameters { key: "seed" value { int64_param: -1 } } '
        'parameters { key: "best_of" value { bool_param: true } }'))


def main():
    config_seeds()
    placement_seeds()
    safetensors_seeds()
    request_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))), "seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
