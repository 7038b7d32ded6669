"""Where the words of a removal are in the prompt: the target's tokens, the protected words, the negative prompts.

Works on a tokenizer only (no model), so every lookup runs before any model pass and a typo never costs an inversion.
"""

from __future__ import annotations

from typing import Sequence


#: Below this many tokens a vocabulary is a toy one (the embedded model's has 149; CLIP's 49408): a word it can only
#: spell letter by letter is a word its text encoder never learned.
SMALL_VOCABULARY = 10_000


def check_known_word(tokenizer, word: str, ids: list[int]) -> None:
    """Refuses a target word the tokenizer does not know: one with unknown tokens (an emoji in a vocabulary without
    bytes for it), or, in a small vocabulary, one it can only spell as single characters. Such a word has no
    attention map of its own, and the removal would edit whatever the map happened to find."""
    unknown = tokenizer.unk_token_id
    if unknown is not None and unknown in ids:
        raise ValueError(
            f"`target` word {word!r} contains characters the tokenizer does not know (they become its unknown "
            f"token {tokenizer.unk_token!r}); name the object with a word of the prompt.{known_words_hint(tokenizer)}"
        )
    if len(tokenizer) < SMALL_VOCABULARY and len(ids) > 1:
        pieces = [piece.replace("</w>", "") for piece in tokenizer.convert_ids_to_tokens(ids)]
        if any(len(piece) <= 1 for piece in pieces):
            raise ValueError(
                f"`target` word {word!r} is not in the tokenizer's {len(tokenizer)}-token vocabulary (it is spelt "
                f"{'+'.join(pieces)}): the text encoder never learned it.{known_words_hint(tokenizer)}"
            )


def known_words_hint(tokenizer, count: int = 12) -> str:
    """For a small vocabulary, a few of the whole words it knows; nothing for a real one."""
    if len(tokenizer) >= SMALL_VOCABULARY:
        return ""
    words = sorted(
        token[: -len("</w>")]
        for token in tokenizer.get_vocab()
        if token.endswith("</w>") and len(token) > len("</w>") + 2 and token[: -len("</w>")].isalpha()
    )
    return f" Words it knows include: {', '.join(words[:count])}." if words else ""



def find_target_tokens(tokenizer, prompt: str, target: str) -> list[list[int]]:
    """Token positions (in the padded sequence, start token at 0) of each word of ``target`` in ``prompt``.

    Words split into several tokens keep all of them; a word or phrase that occurs several times keeps every
    occurrence; case follows the tokenizer (CLIP lower-cases). A match must start at a word boundary, so "dog" is not
    found inside "hotdog". Raises ``ValueError`` naming the target if it is not in the prompt or falls past the
    tokenizer's length limit.
    """
    words = target.split()
    if not words:
        raise ValueError(f"`target` must name a word of the prompt, got an empty string {target!r}.")
    prompt_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    word_ids = [tokenizer(word, add_special_tokens=False).input_ids for word in words]
    if any(len(ids) == 0 for ids in word_ids):
        raise ValueError(f"`target` {target!r} contains a word the tokenizer maps to no token.")
    phrase = [token for ids in word_ids for token in ids]
    vocab_tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
    uses_word_ends = any(isinstance(tok, str) and tok.endswith("</w>") for tok in vocab_tokens)
    # a special token (start, end, or the unknown token an emoji becomes) ends whatever came before it
    boundaries = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id} - {None}

    def starts_word(position: int) -> bool:
        if position == 0 or not uses_word_ends:
            return True
        previous_id, previous = prompt_ids[position - 1], vocab_tokens[position - 1]
        return previous_id in boundaries or (isinstance(previous, str) and previous.endswith("</w>"))

    positions: list[list[int]] = [[] for _ in words]
    for start in range(len(prompt_ids) - len(phrase) + 1):
        if prompt_ids[start : start + len(phrase)] == phrase and starts_word(start):
            offset = start
            for n, ids in enumerate(word_ids):
                positions[n].extend(range(offset, offset + len(ids)))
                offset += len(ids)
    if not positions[0]:
        raise ValueError(f"`target` {target!r} does not occur in the prompt {prompt!r}; name a word or phrase of the prompt.")
    for word, ids in zip(words, word_ids):  # present, but perhaps as unknown tokens or spelt letter by letter
        check_known_word(tokenizer, word, ids)
    limit = tokenizer.model_max_length - 1
    if max(max(p) for p in positions) >= limit:
        raise ValueError(
            f"`target` {target!r} falls past the tokenizer's {tokenizer.model_max_length}-token limit in the prompt; "
            "shorten the prompt."
        )
    return positions


def protected_token_groups(tokenizer, prompt: str, targets: list[str], protect) -> list[list[int]]:
    """Token positions of each protected word of ``prompt``: ``protect`` (words of the prompt; an absent one is a
    ``ValueError`` naming it), or for ``None`` the prompt's other objects (:func:`default_protected_words`; a word the
    tokenizer cannot find as a whole word is skipped)."""
    words = default_protected_words(prompt, targets) if protect is None else list(protect)
    groups = []
    for word in words:
        try:
            groups.append([p for positions in find_target_tokens(tokenizer, prompt, word) for p in positions])
        except ValueError as error:
            if protect is not None:
                raise ValueError(f"`protect` {word!r} is not a word of the prompt {prompt!r}: {error}") from None
    return groups




# ----------------------------------------------------------------------------------------------------------------
# Protecting the prompt's other objects (ours, not in the paper)
# ----------------------------------------------------------------------------------------------------------------

#: Function words that never name an object to protect (a fixed English list).
STOP_WORDS = frozenset(
    "a an the this that these those of on in at over under against with without and or but to from by for near "
    "beside behind above below next its it is are photo picture image".split()
)
#: Words that open the scene the objects lie on ("... on a sky background"): what follows is not protected.
SCENE_PREPOSITIONS = ("on", "in", "over", "against")
PHRASE_SEPARATORS = ("and", "with")


def default_protected_words(prompt: str, targets: Sequence[str]) -> list[str]:
    """The prompt's other objects: for each noun phrase that does not hold a target, its last content word.

    Works on words, not tokens, so it holds for any tokenizer. The prompt is cut at the first of
    ``SCENE_PREPOSITIONS`` (what follows is the background the objects lie on, the region removal fills from), the
    rest split into phrases at commas and ``PHRASE_SEPARATORS``. A phrase containing a whole target phrase is the
    target's and gives nothing; every other phrase gives its last word that is neither a function word
    (``STOP_WORDS``) nor a target word: "a red star and a yellow triangle on a sky background" with target "star"
    protects "triangle"; with target "red star" beside "a blue star", it protects "blue".
    """
    words = [w.strip(".;:!?\"'()").lower() for w in prompt.replace(",", " , ").split()]
    for n, word in enumerate(words):
        if n > 0 and word in SCENE_PREPOSITIONS:
            words = words[:n]
            break
    target_words = {w.lower() for t in targets for w in t.split()}
    phrases, current = [], []
    for word in words + [","]:
        if word in PHRASE_SEPARATORS or word in (",", ""):
            if current:
                phrases.append(current)
            current = []
        else:
            current.append(word)
    protected = []
    for phrase in phrases:
        text = " " + " ".join(phrase) + " "
        if any(" " + t.lower() + " " in text for t in targets):
            continue
        content = [w for w in phrase if w not in STOP_WORDS and w not in target_words]
        if content and content[-1] not in protected:
            protected.append(content[-1])
    return protected



def prompt_without_targets(prompt: str, targets: Sequence[str]) -> str:
    """``prompt`` with the noun phrases that hold a target dropped: the text of the image once the target is gone,
    for ``fill_prompt=True`` (ours).

    The same split as :func:`default_protected_words` (phrases at commas and ``PHRASE_SEPARATORS``, up to the first
    of ``SCENE_PREPOSITIONS``): "a red star and a yellow triangle on a sky background" without "star" is "a yellow
    triangle on a sky background"; with every phrase dropped, the scene alone ("a sky background"), or the empty
    prompt when there is none. Case and punctuation of the kept words are the prompt's own.
    """
    words = prompt.replace(",", " , ").split()
    scene = []
    for n, word in enumerate(words):
        if n > 0 and word.strip(".;:!?\"'()").lower() in SCENE_PREPOSITIONS:
            words, scene = words[:n], words[n:]
            break
    phrases, current = [], []
    for word in words + [","]:
        if word.lower() in PHRASE_SEPARATORS or word == ",":
            if current:
                phrases.append(current)
            current = []
        else:
            current.append(word)
    wanted = [" " + " ".join(t.lower().split()) + " " for t in targets]
    kept = [p for p in phrases if not any(t in " " + " ".join(w.strip(".;:!?\"'()").lower() for w in p) + " "
                                          for t in wanted)]  # fmt: skip
    if not kept:
        return " ".join(scene[1:])  # the scene without its preposition, or the empty prompt
    return " ".join([" and ".join(" ".join(p) for p in kept)] + scene)


def negative_prompts(negative_prompt, prompt, batch: int) -> list[str]:
    """The unconditional prompts for ``encode_prompt``: as in SD, the empty prompt unless ``negative_prompt``."""
    if negative_prompt is None:
        return [""] * batch
    if prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(
            f"`negative_prompt` must be of the same type as `prompt`, got {type(negative_prompt).__name__}."
        )
    negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != batch:
        raise ValueError(f"`negative_prompt` has {len(negatives)} entries but `prompt` has {batch}.")
    return negatives


def check_distinct_targets(targets) -> None:
    """Refuses a target named twice (case and spacing aside): its guidance would silently be applied twice."""
    seen = set()
    for target in targets:
        key = " ".join(target.lower().split())
        if key in seen:
            raise ValueError(
                f"`target` names {target!r} twice: its guidance would be applied twice. Name each object once."
            )
        seen.add(key)
