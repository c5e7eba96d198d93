"""jaxdiff.text tokenizers give the ids transformers gives Stable Diffusion pipelines.

Reference ids (tests/fixtures/text/tokens.json, from generate.py): each prompt of prompts.json
tokenized by transformers with ``padding="max_length", max_length=model_max_length,
truncation=True``, and the text diffusers' truncation warning names.
"""

import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest

from jaxdiff.text import load_tokenizer

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "text")
TOKENIZERS = os.path.join(HERE, "tokenizers")
NAMES = ["clip", "clip_pad", "t5_spiece", "t5_json"]

with open(os.path.join(HERE, "prompts.json"), encoding="utf-8") as _f:
    PROMPTS = json.load(_f)
with open(os.path.join(HERE, "tokens.json"), encoding="utf-8") as _f:
    REFERENCE = json.load(_f)


def test_prompt_set_covers_the_hard_cases():
    assert len(PROMPTS) >= 50 and "" in PROMPTS
    assert any(any(ord(c) > 0x3000 for c in p) for p in PROMPTS)  # CJK / emoji
    assert any("  " in p for p in PROMPTS) and any(c.isdigit() for p in PROMPTS for c in p)
    assert sum(r != "" for r in REFERENCE["clip"]["removed"]) >= 3  # longer than 77 tokens


@pytest.mark.parametrize("name", NAMES)
def test_ids_equal_transformers(name):
    ref = REFERENCE[name]
    tok = load_tokenizer(os.path.join(TOKENIZERS, name))
    assert tok.max_length == ref["max_length"] and tok.pad_token_id == ref["pad_token_id"]
    ids = tok(PROMPTS)
    assert ids.dtype == np.int32 and ids.shape == (len(PROMPTS), ref["max_length"])
    want = np.array(ref["ids"])
    agree = (ids == want).all(axis=1)
    assert agree.all(), [PROMPTS[i] for i in np.flatnonzero(~agree)]
    np.testing.assert_array_equal(tok(PROMPTS[7]), want[7:8])  # one string


def test_pad_token_comes_from_the_config():
    sd1 = load_tokenizer(os.path.join(TOKENIZERS, "clip"))
    sd2 = load_tokenizer(os.path.join(TOKENIZERS, "clip_pad"))
    assert sd1.pad_token_id == sd1.eos_token_id and sd2.pad_token_id == 0
    a, b = sd1("a photo of a cat")[0], sd2("a photo of a cat")[0]
    end = int(np.argmax(a == sd1.eos_token_id))
    np.testing.assert_array_equal(a[: end + 1], b[: end + 1])
    assert (a[end:] == sd1.eos_token_id).all() and (b[end + 1 :] == 0).all()


@pytest.mark.parametrize("name", ["clip", "t5_spiece"])
def test_truncation_warning_names_the_removed_text(name, caplog):
    ref = REFERENCE[name]
    tok = load_tokenizer(os.path.join(TOKENIZERS, name))
    long = [i for i, r in enumerate(ref["removed"]) if r]
    with caplog.at_level(logging.WARNING, logger="jaxdiff.text"):
        tok([PROMPTS[i] for i in range(10)])
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="jaxdiff.text"):
        tok(PROMPTS)
    (record,) = caplog.records
    message = record.getMessage()
    assert f"up to {ref['max_length']} tokens" in message
    for i in long:
        assert f"prompt {i}: {ref['removed'][i]!r}" in message


def test_attention_mask_marks_the_real_tokens():
    ref = np.array(REFERENCE["t5_spiece"]["ids"])
    tok = load_tokenizer(os.path.join(TOKENIZERS, "t5_spiece"))
    ids, mask = tok(PROMPTS, return_attention_mask=True)
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_array_equal(mask, (ref != tok.pad_token_id).astype(np.int32))


def test_directory_without_config_needs_max_length(tmp_path):
    path = tmp_path / "tokenizer"
    shutil.copytree(os.path.join(TOKENIZERS, "clip"), path)
    os.remove(path / "tokenizer_config.json")
    with pytest.raises(ValueError, match="pass max_length"):
        load_tokenizer(path)
    tok = load_tokenizer(path, max_length=77)
    np.testing.assert_array_equal(tok(PROMPTS), np.array(REFERENCE["clip"]["ids"]))


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    tok = load_tokenizer(os.path.join(TOKENIZERS, "clip"))
    with pytest.raises(TypeError, match="must be strings"):
        tok(["a cat", 3])
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tok("a cat", max_length=1)
    assert tok([]).shape == (0, 77)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxdiff\[text\]'"):
        load_tokenizer(os.path.join(TOKENIZERS, "clip"))
