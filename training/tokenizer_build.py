"""Build a word-level CLIP BPE tokenizer (vocab.json + merges.txt) for the scene vocabulary."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bpe(word: Sequence[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Reference CLIP BPE: repeatedly merge the lowest-ranked adjacent pair."""
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts[:-1], parts[1:]))]
        r, _ = min(pairs)
        if r == 1 << 30:
            break
        a, b = [p for p in ranks if ranks[p] == r][0]
        out, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def build_vocab_and_merges(words: Sequence[str]):
    """Greedy: append merges (always of lowest priority) until every word is one token.

    Appending a lowest-priority merge can never change the segmentation of a word
    that already ends as a single token, so earlier words stay single tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: List[str] = []
    for c in letters:
        vocab.append(c)
    for c in letters:
        vocab.append(c + "</w>")
    merges: List[Tuple[str, str]] = []
    ranks: Dict[Tuple[str, str], int] = {}
    for w in words:
        sym = list(w[:-1]) + [w[-1] + "</w>"]
        while True:
            parts = _bpe(sym, ranks)
            if len(parts) == 1:
                break
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tok = pair[0] + pair[1]
            if tok not in vocab:
                vocab.append(tok)
    for w in words:
        assert _bpe(list(w[:-1]) + [w[-1] + "</w>"], ranks) == [w + "</w>"], w
    vocab += [BOS, EOS]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_tokenizer(out_dir: str, words: Sequence[str], model_max_length: int = 32):
    os.makedirs(out_dir, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f, indent=1)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
        "errors": "replace",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=1)
    return vocab
