"""Tiny randomly initialised BERT checkpoints for tests: the same ``--base`` code path as a real encoder,
in a temp dir, in well under a second.

    from shenhe.training.encoder.testing import make_tiny_base
    base_dir = make_tiny_base(tmp_path / "tiny", tokenizer="wordpiece")   # or "unigram"
    base = load_base(str(base_dir))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Characters of the tiny vocabulary: enough everyday Chinese for test sentences to tokenise mostly
# without <unk>, plus ASCII letters and digits.
TINY_CHARS = (
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
    "日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政"
    "美相见被利什二等产或新己制身果加西斯月话合回特代内信表化老给世位次度门任常先海通教儿原东声提立及比员"
    "解水名真论处走义各入几口认条平系气题活尔更别打女变四神总何电数安少报才结反受目太量再感建务做接必场件"
    "计管期市直德资命山金指克许统区保至队形社便空决治展马科司五基眼书非则听白却界达光放强即像难且权思王象"
    "完设式色路记南品住告类求据程北边死张该交规万取拉格望觉术领共确传师观清今切院让识候带导争运笑飞风步改"
    "收根干造言联持组每济车亲极林服快办议往元英士证近失转夫令准布始怎呢存未远叫台单影具罗字爱击流备兵连调"
    "深商算质团集百需价花党华城石级整府离况亚请技际约示复病息究线似官火断精满支视消越器容照须九增研写称企"
    "八功吗包片史委乎查轻易早曾除农找装广显吧阿李标谈吃图念六引历首医局突专费号尽另周较注语仅考落青随选列"
    "垃圾骗子傻滚蛋操你妈死全家赌博色情毒品枪支诈骗刷单返利加微信日赚兼职谣言造谣辱骂歧视暴力恐怖邪教"
)
ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:;'\"()[]-_/@#%&*+=~"
FULLWIDTH_PUNCT = "，。！？：；、“”‘’（）《》【】…—～"


def tiny_vocab_chars() -> list[str]:
    seen: dict[str, None] = {}
    for ch in TINY_CHARS + ASCII + FULLWIDTH_PUNCT:
        seen.setdefault(ch, None)
    return list(seen)


def tiny_wordpiece_tokenizer() -> tuple[Tokenizer, dict[str, str]]:
    """A ``bert-base-chinese``-style WordPiece tokenizer (CJK split per character, lower-cased)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = tiny_vocab_chars()
    vocab = {t: i for i, t in enumerate(specials + chars + ["##" + c for c in ASCII if c.isalnum()])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}


def tiny_unigram_tokenizer() -> tuple[Tokenizer, dict[str, str]]:
    """An XLM-R-style SentencePiece unigram tokenizer (``<s> <pad> </s> <unk>`` ... ``<mask>``)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(ch, -5.0 - i * 1e-3) for i, ch in enumerate(tiny_vocab_chars())]
    pieces += [("\u2581" + ch, -6.0 - i * 1e-3) for i, ch in enumerate(ASCII) if ch.isalnum()]
    pieces += [("<mask>", 0.0)]
    tok = Tokenizer(Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                 "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}


def make_tiny_base(directory: Path, tokenizer: str = "wordpiece", hidden_size: int = 32, layers: int = 2,
                   seed: int = 0) -> Path:
    """Write a tiny random ``BertModel`` + fast tokenizer checkpoint to ``directory`` and return it.

    ``tokenizer``: ``"wordpiece"`` (like bert-base-chinese / hfl models) or ``"unigram"`` (like XLM-R/e5)."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    if tokenizer == "wordpiece":
        tok, special_kwargs = tiny_wordpiece_tokenizer()
    elif tokenizer == "unigram":
        tok, special_kwargs = tiny_unigram_tokenizer()
    else:
        raise ValueError(f"tokenizer must be 'wordpiece' or 'unigram', not {tokenizer!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **special_kwargs)
    fast.save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden_size * 2, max_position_embeddings=128,
                        pad_token_id=tok.token_to_id(special_kwargs["pad_token"]), architectures=["BertModel"])
    BertModel(config).save_pretrained(str(directory))
    return directory
