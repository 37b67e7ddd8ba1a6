"""A tiny random-initialised Llama (with its own byte-level BPE and chat template) for tests and
benchmarks: loads in transformers and in vLLM (CPU attention needs head size 32+), builds in seconds.

The weights are random, so the text it writes is noise; what matters is that every engine computes
the same numbers on it. Same corpus + seed -> same tokenizer and weights.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The chat format: <s><|user|>question<|end|><|assistant|>answer<|end|>
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def sample_texts(limit: int = 2000) -> list[str]:
    """Texts from the project's shipped samples (data/samples/*.jsonl[.gz]) to train the tokenizer."""
    texts: list[str] = []
    for path in sorted(_SAMPLES.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                texts.extend(_strings(json.loads(line)))
                if len(texts) >= limit:
                    return texts
    if not texts:
        raise FileNotFoundError(f"no sample texts under {_SAMPLES}; pass corpus= explicitly")
    return texts


def build_tiny_model(path: str | Path, corpus: Iterable[str] | None = None, *, vocab_size: int = 512,
                     seed: int = 0, sequence_classification: bool = False) -> Path:
    """Write a tiny Llama (2 layers, hidden 64, 2 heads of 32) + tokenizer to `path` and return it.

    `sequence_classification=True` writes a LlamaForSequenceClassification (1 label) instead: a
    tiny reward model sharing the same tokenizer.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    texts = list(corpus) if corpus is not None else sample_texts()

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="<|end|>",
                                  pad_token="<pad>", unk_token=None)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, dtype="float32", num_labels=1,
        # wider than the usual 0.02 so next-token distributions are peaked, not near-uniform:
        # an off-by-one in scoring then changes log-probs by far more than the 1e-3 tolerance
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    cls = LlamaForSequenceClassification if sequence_classification else LlamaForCausalLM
    model = cls(config).to(torch.float32).eval()
    model.save_pretrained(path)
    return path
