"""Our GGUF reader and dequantizers against gguf-py's, field by field and bit for bit."""

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from llmtool.core.errors import ModelError
from llmtool.core.gguf.reader import GGUFFile, GGUFTensor

Q = gguf.GGMLQuantizationType


def _write(path, tensors: dict[str, tuple[np.ndarray, Q]]):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_float32("llama.rope.freq_base", 10000.5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_array("tokenizer.ggml.tokens", ["a", "bé", "", "<s>", "x" * 300])
    writer.add_array("tokenizer.ggml.token_type", [1, 2, 3, 4, 5])
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.25, 0.0, 1.0, 2.0])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, gguf_quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0]


def test_header_and_tensors_match_gguf_py(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        f"t{i}.weight": (rng.standard_normal((8, 64)).astype(np.float32), q) for i, q in enumerate(TYPES)
    }
    path = tmp_path / "m.gguf"
    _write(path, tensors)
    ours, ref = GGUFFile(path), gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields == fields  # the floats here are exact in float32
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors, strict=True):
        assert mine.shape == tuple(reversed(theirs.shape.tolist()))
        assert mine.type_name == theirs.tensor_type.name
        expected = gguf_dequantize(theirs.data, theirs.tensor_type).astype(np.float32).reshape(mine.shape)
        assert np.array_equal(mine.dequantize(), expected), mine.name


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.F16, Q.BF16])
def test_fast_dequantizers_are_bit_exact(qtype):
    x = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32) * 3
    raw = gguf_quantize(x, qtype)
    tensor = GGUFTensor("x", (16, 256), int(qtype), qtype.name, raw.reshape(-1).view(np.uint8))
    out = tensor.dequantize()
    assert out.flags.writeable and out.dtype == np.float32
    assert np.array_equal(out, gguf_dequantize(raw, qtype).astype(np.float32))


def test_not_a_gguf_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 7)
    with pytest.raises(ModelError, match="not a valid GGUF"):
        GGUFFile(bad)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelError):
        GGUFFile(tmp_path / "empty.gguf")
