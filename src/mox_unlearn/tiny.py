"""Tiny tokenizers and Llama models built from a config, for tests, benchmarks and the demo.

Nothing here downloads anything: the tokenizer is trained on the given texts with the
`tokenizers` library and the model is randomly initialised from a `LlamaConfig`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: str | None = None):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a `PreTrainedTokenizerFast`.

    It has real, distinct `<pad>`, `<s>` (BOS) and `</s>` (EOS) tokens; BOS is prepended on encode.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def build_tiny_llama(
    out_dir: str | Path,
    tokenizer,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    max_shard_size: str | int = "5GB",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save a randomly initialised Llama model plus `tokenizer` as an ordinary HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    out = Path(out_dir)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_model(
    out: str | Path,
    data_specs: list[str],
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
    **model_kwargs,
) -> Path:
    """A tokenizer trained on the texts of `data_specs` plus a random tiny Llama, written atomically.

    The smallest model `mox unlearn` accepts: good for trying the pipeline with no download.
    """
    from mox_unlearn.data import load_records
    from mox_unlearn.io.atomic import atomic_output_dir

    texts: list[str] = []
    for spec in data_specs:
        rs = load_records(spec, name="tokenizer training")
        for record in rs.records:
            texts.extend(v for k, v in record.items() if k in ("question", "answer", "text") and isinstance(v, str))
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        build_tiny_llama(tmp, build_tokenizer(texts, vocab_size=vocab_size), seed=seed, **model_kwargs)
    return Path(out)
