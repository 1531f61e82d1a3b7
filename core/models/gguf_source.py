"""Reading a GGUF file as a Llama-family model: metadata -> HF config, tensors -> HF names.

The header is read by our own GGUFFile (fast: it is most of a cold start) and quantized
tensors are dequantized by kernels.ggml_dequant; llama.cpp's q/k row permutation (for its
interleaved rotary layout) is undone so the same forward pass serves GGUF and HF weights.
"""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ModelError
from ..gguf.reader import GGUFFile, GGUFTensor
from .spec import ModelSpec, spec_from_hf_config

_READ_AHEAD = 4  # tensors dequantized ahead of the consumer

# GGUF architecture -> (HF architecture, does llama.cpp permute q/k rows for it?)
GGUF_ARCHITECTURES = {"llama": ("LlamaForCausalLM", True), "qwen2": ("Qwen2ForCausalLM", False)}

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_tensor_name(gguf_name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; None if not a weight we use."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{suffix}"
    return None


class GGUFSource:
    def __init__(self, path: Path):
        self.path = path
        self.file = GGUFFile(path)
        self.tensors = self.file.tensors
        self.arch = self.field("general.architecture")
        if self.arch not in GGUF_ARCHITECTURES:
            supported = ", ".join(GGUF_ARCHITECTURES)
            raise ModelError(f"unsupported GGUF architecture '{self.arch}': supported are {supported}")

    def field(self, key: str, default=None):
        value = self.file.fields.get(key)
        return default if value is None else value

    def arch_field(self, key: str, default=None):
        return self.field(f"{self.arch}.{key}", default)

    def hf_config(self) -> dict:
        """A config.json equivalent of the GGUF metadata."""
        hf_arch, _ = GGUF_ARCHITECTURES[self.arch]
        names = {t.name for t in self.tensors}
        n_head = self._required("attention.head_count")
        vocab = self.arch_field("vocab_size") or len(self.field("tokenizer.ggml.tokens", []))
        config = {
            "architectures": [hf_arch],
            "model_type": self.arch,
            "vocab_size": vocab,
            "hidden_size": self._required("embedding_length"),
            "intermediate_size": self._required("feed_forward_length"),
            "num_hidden_layers": self._required("block_count"),
            "num_attention_heads": n_head,
            "num_key_value_heads": self.arch_field("attention.head_count_kv", n_head),
            "max_position_embeddings": self.arch_field("context_length", 4096),
            "rms_norm_eps": float(self.arch_field("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.arch_field("rope.freq_base", 10000.0)),
            "tie_word_embeddings": "output.weight" not in names,
            "attention_bias": "blk.0.attn_q.bias" in names and self.arch == "llama",
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
            # End-of-turn ends a chat reply too, where a GGUF names it apart from EOS.
            "eos_token_id": sorted(
                {
                    t
                    for t in (
                        self.field("tokenizer.ggml.eos_token_id"),
                        self.field("tokenizer.ggml.eot_token_id"),
                    )
                    if t is not None
                }
            )
            or None,
            "_name_or_path": self.field("general.name", self.path.stem),
        }
        key_length = self.arch_field("attention.key_length")
        if key_length:
            config["head_dim"] = key_length
        scaling = self.arch_field("rope.scaling.type")
        if scaling and scaling != "none":
            config["rope_scaling"] = {
                "rope_type": scaling,
                "factor": self.arch_field("rope.scaling.factor", 1.0),
            }
        return config

    def spec(self) -> ModelSpec:
        spec = spec_from_hf_config(self.hf_config())
        freqs = next((t for t in self.tensors if t.name == "rope_freqs.weight"), None)
        if freqs is not None:  # Llama-3 rope scaling, stored as per-frequency divisors
            factors = tuple(float(x) for x in freqs.dequantize().ravel())
            spec = replace(spec, rope=replace(spec.rope, freq_factors=factors))
        return spec

    def tensor_types(self) -> dict[str, str]:
        return {t.name: t.type_name for t in self.tensors}

    def num_tensors(self) -> int:
        return sum(hf_tensor_name(t.name) is not None for t in self.tensors)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, fp32 tensor in torch layout) for every model weight, in file order.

        Two tensors dequantize at once (numpy releases the GIL, and first-touch page faults
        of the new arrays overlap too): about 0.4 s instead of 0.8 s for the default model.
        At most a few run ahead of the consumer, so a large model never holds its weights in
        fp32 all at once."""
        n_head = self.arch_field("attention.head_count")
        n_head_kv = self.arch_field("attention.head_count_kv", n_head)
        _, permuted = GGUF_ARCHITECTURES[self.arch]
        wanted = [(t, name) for t in self.tensors if (name := hf_tensor_name(t.name)) is not None]

        def load(item: tuple[GGUFTensor, str]) -> torch.Tensor:
            t, name = item
            try:
                tensor = torch.from_numpy(t.dequantize())
            except Exception as e:
                raise ModelError(f"cannot read tensor {t.name} from {self.path.name}: {e}") from None
            if permuted and ".q_proj." in name:
                return unpermute_rows(tensor, n_head)
            if permuted and ".k_proj." in name:
                return unpermute_rows(tensor, n_head_kv)
            return tensor

        with ThreadPoolExecutor(2, thread_name_prefix="llmtool-dequant") as pool:
            pending: deque[tuple[str, Future]] = deque()
            for item in wanted:
                pending.append((item[1], pool.submit(load, item)))
                if len(pending) > _READ_AHEAD:
                    name, future = pending.popleft()
                    yield name, future.result()
            while pending:
                name, future = pending.popleft()
                yield name, future.result()

    def _required(self, key: str):
        value = self.arch_field(key)
        if value is None:
            raise ModelError(f"{self.path.name} lacks the metadata key {self.arch}.{key}")
        return value


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's convert-time permute (interleaved -> rotate-half row order)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert-time permute (rotate-half -> interleaved row order)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
