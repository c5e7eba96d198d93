"""Tokenizers of text encoders, padded and truncated the way Stable Diffusion pipelines call them.

`load_tokenizer` reads a ``tokenizer/`` directory (CLIP: vocab.json + merges.txt; T5:
spiece.model or tokenizer.json; with tokenizer_config.json / special_tokens_map.json) through
transformers' tokenizer classes, and `Tokenizer` returns int32 ids [B, max_length]: start token,
text, end token, then the pad token of the tokenizer config; longer prompts are cut to
``max_length`` tokens keeping the end token, with a warning that names the removed text.

Why transformers' classes rather than `tokenizers` / `sentencepiece` directly: they are what
the reference pipelines tokenize with, and they hold the knowledge that turns those files into
the exact pipeline (CLIP's NFC + whitespace-collapsing + lower-case normaliser, its split
pattern, byte-level BPE with ``</w>``, start / end tokens; T5's unigram model with the
SentencePiece normaliser, ``</s>`` and the sentinel tokens). Rebuilding that from `tokenizers`
parts would copy it and drift from it. They need neither torch nor a network (directories are
read with ``local_files_only``), and the tokenization itself runs in `tokenizers` (Rust).
Optional dependencies: ``pip install 'jaxdiff[text]'``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'jaxdiff[text]'"
_UNSET_LENGTH = 10**6  # transformers' placeholder for "no model_max_length" is ~1e30


def _transformers():
    # transformers' import-time advice that torch is absent is expected here: mute only that.
    key = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            f"jaxdiff.text needs the optional dependencies of the 'text' extra ({e}): "
            f"{INSTALL_HINT}"
        ) from e
    finally:
        if previous is None:
            del os.environ[key]
        else:
            os.environ[key] = previous
    return transformers


class Tokenizer:
    """Prompts -> int32 token ids [B, max_length] (a transformers tokenizer inside).

    Attributes:
      max_length: length of every returned row (``model_max_length`` of the tokenizer
        config unless overridden).
      pad_token_id, eos_token_id, bos_token_id: special token ids (None when absent).
      vocab_size: number of ids the tokenizer can return (added tokens included).
      backend: the transformers tokenizer.
    """

    def __init__(self, backend: Any, max_length: int, name: str = "tokenizer"):
        self.backend = backend
        self.max_length = int(max_length)
        self.name = name
        self.pad_token_id = backend.pad_token_id
        self.eos_token_id = backend.eos_token_id
        self.bos_token_id = backend.bos_token_id
        self.vocab_size = len(backend)
        if self.pad_token_id is None:
            raise ValueError(f"{name}: the tokenizer config names no pad token.")

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.name!r}, {type(self.backend).__name__}, max_length="
            f"{self.max_length}, vocab_size={self.vocab_size}, pad_token_id={self.pad_token_id})"
        )

    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        max_length: int | None = None,
        return_attention_mask: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Token ids of ``prompts``, padded / truncated to ``max_length``.

        Args:
          prompts: one prompt or a sequence of prompts ("" is the unconditional prompt).
          max_length: row length; defaults to `max_length`.
          return_attention_mask: also return the [B, L] int32 mask (1 on real tokens), which
            T5-conditioned models pass to the encoder; CLIP-conditioned Stable Diffusion does
            not.

        Returns:
          ids: int32 [B, L]; with ``return_attention_mask``, (ids, mask).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"{self.name}: prompts must be strings, got {prompts!r:.200}.")
        length = self.max_length if max_length is None else int(max_length)
        if length < 2:
            raise ValueError(f"{self.name}: max_length must be >= 2, got {length}.")
        if not prompts:
            empty = np.zeros((0, length), np.int32)
            return (empty, empty.copy()) if return_attention_mask else empty
        enc = self.backend(
            prompts, padding="max_length", max_length=length, truncation=True, verbose=False
        )
        ids = np.asarray(enc["input_ids"], np.int32)
        self._warn_truncated(prompts, length)
        if return_attention_mask:
            return ids, np.asarray(enc["attention_mask"], np.int32)
        return ids

    def _warn_truncated(self, prompts: list[str], length: int) -> None:
        full = self.backend(prompts, verbose=False)["input_ids"]
        removed = [self.removed_text(f, length) for f in full]
        cut = [(i, r) for i, r in enumerate(removed) if r is not None]
        if cut:
            logger.warning(
                "%s can only handle sequences up to %d tokens; this part of the input was "
                "truncated: %s",
                self.name, length, "; ".join(f"prompt {i}: {r!r}" for i, r in cut),
            )  # fmt: skip

    def removed_text(self, untruncated_ids: Sequence[int], length: int) -> str | None:
        """Text that truncation to ``length`` drops from a prompt's ids (None if nothing).

        Truncation keeps the first ``length - 1`` tokens and the final special token, so the
        removed tokens are ``untruncated_ids[length - 1 : -1]`` (as diffusers reports them).
        """
        if len(untruncated_ids) <= length:
            return None
        return self.backend.decode(list(untruncated_ids[length - 1 : -1]))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of one row of ids."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _backend(path: str):
    transformers = _transformers()
    if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    # No config: the two layouts text-to-image checkpoints use.
    if all(os.path.isfile(os.path.join(path, f)) for f in ("vocab.json", "merges.txt")):
        return transformers.CLIPTokenizer.from_pretrained(path, local_files_only=True)
    if any(os.path.isfile(os.path.join(path, f)) for f in ("spiece.model", "tokenizer.json")):
        return transformers.T5Tokenizer.from_pretrained(path, local_files_only=True)
    raise FileNotFoundError(
        f"{path}: no tokenizer files (tokenizer_config.json, vocab.json + merges.txt, "
        "spiece.model or tokenizer.json)."
    )


def load_tokenizer(path: str | os.PathLike, *, max_length: int | None = None) -> Tokenizer:
    """Load a tokenizer directory (e.g. a Stable Diffusion checkpoint's ``tokenizer/``).

    Args:
      path: directory with the tokenizer files.
      max_length: row length of the returned ids; defaults to the config's
        ``model_max_length`` (77 for CLIP), and is required when the config has none.

    Returns:
      A `Tokenizer`: ``tokenizer(prompts) -> int32 ids [B, max_length]``.

    Raises:
      ImportError: naming ``pip install 'jaxdiff[text]'`` when transformers is missing.
      FileNotFoundError: when the directory holds no tokenizer.
      ValueError: when no max_length is known, or the config has no pad token.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory.")
    backend = _backend(path)
    if max_length is None:
        max_length = backend.model_max_length
        if max_length is None or max_length >= _UNSET_LENGTH:
            raise ValueError(
                f"{path}: the tokenizer config sets no model_max_length; pass max_length "
                "(77 for CLIP, e.g. 256 or 512 for T5)."
            )
    name = os.path.basename(os.path.normpath(path)) or path
    return Tokenizer(backend, max_length, name)
