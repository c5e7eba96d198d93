"""Text handling for text-conditioned models: tokenizers (through kept libraries)."""

from jaxdiff.text.tokenizer import Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]
