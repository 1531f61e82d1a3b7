"""Reading a GGUF file as one of our families: metadata -> HF config, tensors -> HF names.

The header is read by our own GGUFFile (fast: it is most of a cold start) and quantized
tensors are dequantized by kernels.ggml_dequant. Names, stacked experts, q/k row order and
norm offsets come from core/gguf/layout.py, the writer's own table (itself gguf-py's
TensorNameMap): a file convert-gguf writes, or llama.cpp's converter, reads back to the
checkpoint's tensors, so the same forward pass serves GGUF and HF weights.
"""

import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import gguf
import torch

from ..errors import ModelError
from ..gguf.layout import GGUFTensorSpec, from_gguf, layout, permute_rows, unpermute_rows  # noqa: F401
from ..gguf.reader import GGUFFile, GGUFTensor
from .registry import families
from .spec import ModelSpec, spec_from_hf_config

_READ_AHEAD = 4  # tensors dequantized ahead of the consumer
_BLOCK = re.compile(r"blk\.\d+\.")
_KNOWN = set(gguf.TENSOR_NAMES.values())


def gguf_architectures() -> dict[str, list]:
    """GGUF architecture name -> the families that write it (dense ones first)."""
    out: dict[str, list] = {}
    for fam in families():
        arch = getattr(fam, "gguf_arch", None)
        if arch is not None:
            out.setdefault(gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]], []).append(fam)
    return out


def hf_tensor_name(gguf_name: str) -> str | None:
    """The name back if it is one of llama.cpp's model tensors ('blk.3.attn_q.weight'), else None.
    (The HF name depends on the family: GGUFSource.tensor_map has it.)"""
    stem = gguf_name.rpartition(".")[0]
    return gguf_name if _BLOCK.sub("blk.{bid}.", stem, count=1) in _KNOWN else None


class GGUFSource:
    def __init__(self, path: Path):
        self.path = path
        self.file = GGUFFile(path)
        self.tensors = self.file.tensors
        self.arch = self.field("general.architecture")
        archs = gguf_architectures()
        if self.arch not in archs:
            raise ModelError(f"unsupported GGUF architecture '{self.arch}': supported are {', '.join(sorted(archs))}")
        # One GGUF architecture can hold several families (llama: Llama, Mistral, Mixtral): the
        # experts tell them apart; Mistral reads back as Llama, as llama.cpp runs it.
        moe = self.arch_field("expert_count") is not None
        candidates = archs[self.arch]
        self.family = next((f for f in candidates if _is_moe(f) == moe), candidates[0])
        self._spec: ModelSpec | None = None

    def field(self, key: str, default=None):
        value = self.file.fields.get(key)
        return default if value is None else value

    def arch_field(self, key: str, default=None):
        return self.field(f"{self.arch}.{key}", default)

    def hf_config(self) -> dict:
        """A config.json equivalent of the GGUF metadata (every family's keys: each reads its own)."""
        names = {t.name for t in self.tensors}
        n_head = self._required("attention.head_count")
        n_layers = self._required("block_count")
        hidden = self._required("embedding_length")
        head_dim = self.arch_field("attention.key_length") or hidden // n_head
        vocab = self.arch_field("vocab_size") or len(self.field("tokenizer.ggml.tokens", []))
        bias = "blk.0.attn_q.bias" in names
        config = {
            "architectures": [self.family.architectures[0]],
            "model_type": self.family.model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self._required("feed_forward_length"),
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_head,
            "num_key_value_heads": self.arch_field("attention.head_count_kv", n_head),
            "head_dim": head_dim,
            "max_position_embeddings": self.arch_field("context_length", 4096),
            "rms_norm_eps": float(self.arch_field("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.arch_field("rope.freq_base", 10000.0)),
            "tie_word_embeddings": "output.weight" not in names,
            "attention_bias": bias,
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
        rot = self.arch_field("rope.dimension_count")
        if rot and rot != head_dim:
            config["partial_rotary_factor"] = rot / head_dim
        scaling = self.arch_field("rope.scaling.type")
        if scaling and scaling != "none":
            config["rope_scaling"] = {"rope_type": scaling, "factor": self.arch_field("rope.scaling.factor", 1.0)}
        long, short = self._tensor("rope_factors_long.weight"), self._tensor("rope_factors_short.weight")
        if long is not None and short is not None:  # LongRoPE (Phi-3)
            original = self.arch_field("rope.scaling.original_context_length", config["max_position_embeddings"])
            config["original_max_position_embeddings"] = original
            config["rope_scaling"] = {
                "rope_type": "longrope",
                "long_factor": [float(x) for x in long.dequantize().ravel()],
                "short_factor": [float(x) for x in short.dequantize().ravel()],
                "original_max_position_embeddings": original,
            }
            attn_factor = self.arch_field("rope.scaling.attn_factor")
            if attn_factor is not None:
                config["rope_scaling"]["attention_factor"] = float(attn_factor)
        experts = self.arch_field("expert_count")
        if experts is not None:
            config |= {
                "num_experts": experts,
                "num_local_experts": experts,
                "num_experts_per_tok": self._required("expert_used_count"),
                "moe_intermediate_size": self.arch_field("expert_feed_forward_length", config["intermediate_size"]),
                "norm_topk_prob": bool(self.arch_field("expert_weights_norm", True)),
            }
        window = self.arch_field("attention.sliding_window")
        if window:
            config |= {"sliding_window": window, "use_sliding_window": True}
            pattern = self.arch_field("attention.sliding_window_pattern")
            if isinstance(pattern, list) and len(pattern) == n_layers:
                config["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
            elif isinstance(pattern, int) and pattern > 0:
                config["sliding_window_pattern"] = pattern
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if self.arch_field(key) is not None:
                config[key] = float(self.arch_field(key))
        if self.arch.startswith("gemma"):  # llama.cpp scales queries by head_dim ** -0.5 on Gemma
            config |= {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": head_dim}
            config["rope_local_base_freq"] = float(self.arch_field("rope.freq_base_swa", 10000.0))
        if self.arch_field("embedding_scale") is not None:  # Granite's multipliers
            config |= {
                "embedding_multiplier": float(self.arch_field("embedding_scale")),
                "residual_multiplier": float(self.arch_field("residual_scale", 1.0)),
                "attention_multiplier": float(self.arch_field("attention.scale", head_dim**-0.5)),
                "logits_scaling": float(self.arch_field("logit_scale", 1.0)),
            }
        return config

    def spec(self) -> ModelSpec:
        if self._spec is None:
            spec = spec_from_hf_config(self.hf_config())
            freqs = self._tensor("rope_freqs.weight")
            if freqs is not None:  # Llama-3 rope scaling, stored as per-frequency divisors
                factors = tuple(float(x) for x in freqs.dequantize().ravel())
                spec = replace(spec, rope=replace(spec.rope, freq_factors=factors))
            self._spec = spec
        return self._spec

    def tensor_map(self) -> dict[str, GGUFTensorSpec]:
        """GGUF name -> what it holds (layout.py, the writer's table): computed tensors have no sources."""
        return {t.name: t for t in layout(self.spec())}

    def tensor_types(self) -> dict[str, str]:
        return {t.name: t.type_name for t in self.tensors}

    def num_tensors(self) -> int:
        table = self.tensor_map()
        return sum(len(table[t.name].sources) for t in self.tensors if t.name in table)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, fp32 tensor in torch layout) for every model weight, in file order; a
        stacked expert tensor comes back as one tensor per expert.

        Two tensors dequantize at once (numpy releases the GIL, and first-touch page faults
        of the new arrays overlap too): about 0.4 s instead of 0.8 s for the default model.
        At most a few run ahead of the consumer, so a large model never holds its weights in
        fp32 all at once."""
        spec, table = self.spec(), self.tensor_map()
        wanted = [(t, table[t.name]) for t in self.tensors if t.name in table and table[t.name].sources]

        def load(item: tuple[GGUFTensor, GGUFTensorSpec]) -> list[tuple[str, torch.Tensor]]:
            t, entry = item
            try:
                tensor = torch.from_numpy(t.dequantize())
            except Exception as e:
                raise ModelError(f"cannot read tensor {t.name} from {self.path.name}: {e}") from None
            if tuple(tensor.shape) != entry.shape:
                raise ModelError(f"{t.name} in {self.path.name} has shape {tuple(tensor.shape)}, expected {entry.shape}")
            parts = [tensor] if len(entry.sources) == 1 else list(tensor.unbind(0))
            return [(name, from_gguf(spec, name, part)) for name, part in zip(entry.sources, parts)]

        with ThreadPoolExecutor(2, thread_name_prefix="llmtool-dequant") as pool:
            pending: deque[Future] = deque()
            for item in wanted:
                pending.append(pool.submit(load, item))
                if len(pending) > _READ_AHEAD:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()

    def _tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def _required(self, key: str):
        value = self.arch_field(key)
        if value is None:
            raise ModelError(f"{self.path.name} lacks the metadata key {self.arch}.{key}")
        return value


def _is_moe(fam) -> bool:
    return fam.moe_block != "mlp" or fam.name.endswith("moe")
