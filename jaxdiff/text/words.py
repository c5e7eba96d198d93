"""A word-level tokenizer built from a dataset's captions (no optional dependencies).

For text encoders trained from scratch on a small captioned dataset (the digit scenes): the
vocabulary is every word of the training captions, so a prompt is either made of known words
or refused with an error that lists the vocabulary (a model trained from scratch has no
embedding for a word it never saw; silently mapping it to an "unknown" id would give images
of the wrong thing).

Text is lower-cased and split into words (runs of letters, digits and apostrophes) and
single punctuation marks. Ids: 0 is the padding token, 1 the start token that begins every
row, words follow in sorted order. The empty prompt is the start token alone: the
unconditional input of classifier-free guidance. Rows have a fixed length; a longer prompt is
cut to it with a warning naming the words removed (as `jaxdiff.text.Tokenizer` does for CLIP
and T5).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

PAD = "<pad>"
START = "<start>"
_WORD = re.compile(r"[\w']+|[^\w\s]")
FORMAT = "jaxdiff.word_tokenizer"


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text``, e.g. "A 7, left" -> a 7 , left."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Prompts -> int32 ids [B, max_length]: start token, one id per word, then padding.

    Same call interface as `jaxdiff.text.Tokenizer` (``tokenizer(prompts)``, ``max_length``,
    ``pad_token_id``, ``vocab_size``, ``decode``).

    Args:
      words: the vocabulary (distinct words as `split_words` returns them).
      max_length: length of every row, the start token included (>= 2).
    """

    def __init__(self, words: Iterable[str], max_length: int):
        words = sorted(set(words))
        bad = [w for w in words if split_words(w) != [w]]
        if bad:
            raise ValueError(f"WordTokenizer: {bad[:5]} are not single lower-case words.")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"WordTokenizer: max_length must be an int >= 2, got {max_length!r}.")
        self.words = tuple(words)
        self.max_length = max_length
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, None
        self._ids = {w: i + 2 for i, w in enumerate(self.words)}

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_length: int | None = None):
        """The tokenizer of every word in ``captions``.

        Args:
          captions: the training captions.
          max_length: row length; default the longest caption's words + 1 (the start token).
        """
        words, longest = set(), 0
        for caption in captions:
            split = split_words(caption)
            words.update(split)
            longest = max(longest, len(split))
        if not words:
            raise ValueError("WordTokenizer.from_captions: the captions hold no words.")
        return cls(words, longest + 1 if max_length is None else max_length)

    @property
    def vocab_size(self) -> int:
        """Number of ids (padding and start tokens included)."""
        return len(self.words) + 2

    def __repr__(self) -> str:
        return f"WordTokenizer({self.vocab_size} ids, max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.words, self.max_length))

    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        max_length: int | None = None,
        return_attention_mask: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Token ids of ``prompts``, padded (and cut with a warning) to ``max_length``.

        Args:
          prompts: one prompt or a sequence of prompts ("" is the unconditional prompt).
          max_length: row length; defaults to `max_length`.
          return_attention_mask: also return the [B, L] int32 mask (1 on real tokens).

        Returns:
          ids: int32 [B, L]; with ``return_attention_mask``, (ids, mask).

        Raises:
          ValueError: a prompt holds words outside the vocabulary (the message lists it).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"WordTokenizer: prompts must be strings, got {prompts!r:.200}.")
        length = self.max_length if max_length is None else int(max_length)
        if length < 2:
            raise ValueError(f"WordTokenizer: max_length must be >= 2, got {length}.")
        ids = np.zeros((len(prompts), length), np.int32)
        cut = []
        for row, prompt in enumerate(prompts):
            words = split_words(prompt)
            self._check_known(words, row, prompt)
            if len(words) > length - 1:
                cut.append(f"prompt {row}: {' '.join(words[length - 1 :])!r}")
                words = words[: length - 1]
            ids[row, 0] = self.bos_token_id
            ids[row, 1 : 1 + len(words)] = [self._ids[w] for w in words]
        if cut:
            logger.warning(
                "The word tokenizer can only handle prompts of up to %d words; this part of "
                "the input was truncated: %s",
                length - 1, "; ".join(cut),
            )  # fmt: skip
        if return_attention_mask:
            return ids, (ids != self.pad_token_id).astype(np.int32)
        return ids

    def _check_known(self, words: list[str], row: int, prompt: str) -> None:
        unknown = [w for w in words if w not in self._ids]
        if unknown:
            raise ValueError(
                f"Prompt {row} ({prompt!r}) has words outside the tokenizer's vocabulary: "
                f"{', '.join(repr(w) for w in dict.fromkeys(unknown))}. The vocabulary is: "
                f"{' '.join(self.words)}."
            )

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of one row of ids."""
        names = {self.pad_token_id: PAD, self.bos_token_id: START}
        out = []
        for i in (int(i) for i in ids):
            if i in names:
                if not skip_special_tokens:
                    out.append(names[i])
            elif 2 <= i < self.vocab_size:
                out.append(self.words[i - 2])
            else:
                raise ValueError(f"WordTokenizer: id {i} is outside [0, {self.vocab_size}).")
        return " ".join(out)

    def to_dict(self) -> dict:
        """A JSON-able description (see `from_dict`)."""
        return {"format": FORMAT, "words": list(self.words), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, data: dict) -> WordTokenizer:
        """The tokenizer `to_dict` described."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"Not a word tokenizer description (format {FORMAT!r}): {data!r:.200}")
        return cls(data["words"], int(data["max_length"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        """Read a tokenizer written by `save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))
