"""A tiny llama-architecture GGUF model with random weights, for llama.cpp's server.

Nothing can be downloaded here, and the tests need only llama.cpp's real HTTP behaviour:
its token counts, ``max_tokens`` handling and context-length errors. So the model is made on
the spot: two layers of width 64, seeded random weights (its answers are nonsense), and a
SentencePiece-style vocabulary of a few hundred pieces with the 256 byte-fallback tokens, so
that any text tokenizes. Writing it takes milliseconds.

``python -m tests.realengine.tiny_model OUT.gguf`` writes one by hand.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

# Words whose pieces make up the vocabulary, besides single characters and bytes.
_WORDS = (
    "the of and to in is that it for was on are as with be at by this have from or one had "
    "not but what all were when we there can an your which their said if do will each about "
    "how up out them then she many some so these would other into has more her two like him "
    "see time could no make than first been its who now people my made over did down only way "
    "find use may water long little very after words called just where most know batch line "
    "request token model answer question hello world prompt test number user assistant system"
)
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()"

# A plain-text chat template (Jinja, as llama.cpp's server reads it from the metadata).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)

UNK, BOS, EOS = 0, 1, 2
_FIRST_BYTE = 3  # <0x00>; the 256 byte tokens follow the three control tokens


@dataclass(frozen=True)
class TinyModel:
    path: Path
    context_length: int
    vocab_size: int


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a SentencePiece ("llama") vocabulary.

    llama.cpp's SentencePiece tokenizer merges adjacent pieces when the merged text is a
    token, best score first, so every prefix of a word is a token too; what no piece covers
    falls back to its UTF-8 bytes (``<0xNN>``).
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: list[str] = ["▁", *_CHARS]
    for word in _WORDS.split():
        spelled = "▁" + word
        pieces += [spelled[:end] for end in range(2, len(spelled) + 1)]
    normal = list(dict.fromkeys(p for p in pieces if p not in tokens))
    tokens += normal
    types += [gguf.TokenType.NORMAL] * len(normal)
    # Longer pieces win: a merge into a whole word scores above its parts.
    scores = [0.0] * (len(tokens) - len(normal)) + [float(len(p)) for p in normal]
    return tokens, scores, [int(t) for t in types]


def _never_generated() -> list[int]:
    """Tokens whose output weights are zero, so that their logit is 0 while the best of the
    others is well above it: greedy decoding never picks them, nor does sampling among the
    top 40 (the server's default ``top_k``).

    Without ``</s>`` every answer runs to its ``max_tokens`` or to the end of the context, so
    the tests know each line's completion tokens beforehand. Without byte tokens the answers
    are ASCII: llama-cpp-python skips its ``max_tokens`` check while the text ends in what may
    be the start of a multi-byte UTF-8 character, and then returns more tokens than asked.
    """
    return [UNK, BOS, EOS, *range(_FIRST_BYTE, _FIRST_BYTE + 256)]


def write(
    path: Path,
    *,
    context_length: int = 256,
    embedding: int = 64,
    layers: int = 2,
    heads: int = 4,
    feed_forward: int = 128,
    seed: int = 0,
) -> TinyModel:
    tokens, scores, types = vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        # numpy's (rows, columns) is (outputs, inputs): GGUF stores the shape reversed.
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("lowtide-tiny-random")
    writer.add_context_length(context_length)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)

    ones = np.ones(embedding, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights(vocab, embedding))
    writer.add_tensor("output_norm.weight", ones)
    output = weights(vocab, embedding)
    output[_never_generated()] = 0.0
    writer.add_tensor("output.weight", output)
    for i in range(layers):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weights(embedding, embedding))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones)
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(feed_forward, embedding))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(feed_forward, embedding))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(embedding, feed_forward))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyModel(path, context_length, vocab)


if __name__ == "__main__":
    model = write(Path(sys.argv[1]))
    print(f"{model.path}: vocabulary of {model.vocab_size}, context of {model.context_length}")
