"""Text handling for text-conditioned models: tokenizers of pretrained text encoders (through
kept libraries, the optional ``text`` extra) and a word-level tokenizer built from captions."""

from jaxdiff.text.tokenizer import Tokenizer, load_tokenizer
from jaxdiff.text.words import WordTokenizer, split_words

__all__ = ["Tokenizer", "WordTokenizer", "load_tokenizer", "split_words"]
