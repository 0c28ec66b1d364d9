"""The embedded default policy: a character tokenizer and a tiny Llama-style model, both built in code.

Nothing here downloads anything: the vocabulary is the synthetic task's alphabet plus four special tokens,
and the model is a randomly initialised ``LlamaForCausalLM`` (warm-started by ``pretrain``).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "build_char_tokenizer", "build_tiny_model"]

# Fixed ids 0..3 so that every char tokenizer agrees on them.
SPECIAL_TOKENS: tuple[str, str, str, str] = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = SPECIAL_TOKENS


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` (ids 4..), plus ``<pad>=0 <bos>=1 <eos>=2 <unk>=3``.

    Encoding prepends ``<bos>`` (so ``tokenizer(prompt).input_ids`` is what the policy is conditioned on);
    decoding concatenates characters with nothing in between, so ``decode(encode(s), skip_special_tokens=True)
    == s`` for any ``s`` over the alphabet. Padding is on the left (what batched generation needs).
    """
    if not alphabet:
        raise ValueError("build_char_tokenizer: alphabet is empty; expected the characters of the task")
    duplicates = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if duplicates:
        raise ValueError(f"build_char_tokenizer: alphabet repeats the characters {duplicates!r}")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in alphabet:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # An empty pattern splits between every pair of characters: each character is its own word.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()  # join tokens without the spaces WordLevel would insert
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=4096,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    layers: int = 4,
    heads: int = 4,
    seed: int = 0,
    *,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A randomly initialised Llama-style causal LM sized for ``tokenizer`` (fp32, train mode).

    The defaults (d=128, 4 layers, 4 heads, MLP 384, tied embeddings) give ~0.8M parameters.
    """
    if hidden_size % heads != 0 or (hidden_size // heads) % 2:
        raise ValueError(
            f"build_tiny_model: hidden_size={hidden_size} must be divisible by heads={heads} into an even head "
            "size (rotary embeddings rotate pairs of dimensions)"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        initializer_range=0.02,
    )
    # Seed only the initialisation, leaving the caller's global RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
