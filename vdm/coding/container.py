"""The compressed file: a self-describing container around a bits-back message (bytes only; the
caller reads and writes the file).

Layout (little-endian), version 1:

    offset  size       field
    0       8          magic b"VDMBB\\x00\\x01\\n" (the last two bytes: version 1, newline)
    8       4          uint32 H, the header's length in bytes
    12      H          header: UTF-8 JSON object, sorted keys, no spaces
    12+H    8          uint64 W, the number of message words
    20+H    4 W        the message words (uint32, `Message.words()` order: top of the stack last)
    20+H+4W 32         sha256 of every byte before it

The header holds what a decoder needs besides the model (the number of examples, their shape,
the lockstep batch size, the coder's settings) and what identifies the model that wrote the
file (a hash of its config and of its parameters), so that a decoder can refuse another model
before any decoding. The digest makes a corrupted or truncated file an error at `unpack`, before
the ANS decoder runs; the message's own 160-bit header (`vdm.coding.ans.push_header`) and the
data checksum are a second, independent check of the decode itself.

Sizes: `framing_bits(header)` is the container's one-off cost in bits (magic, lengths, header
and digest); a file is exactly framing_bits + 32 W bits.
"""
from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from vdm.coding.ans import MessageError

MAGIC = b"VDMBB\x00\x01\n"
VERSION = 1
DIGEST_BYTES = 32
_FIXED_BYTES = len(MAGIC) + 4 + 8 + DIGEST_BYTES


class ContainerError(MessageError):
  """The bytes are not an intact vdm compressed file (wrong magic, truncated, corrupted)."""


def _header_bytes(header: dict) -> bytes:
  if not isinstance(header, dict):
    raise ValueError(f"header must be a dict, got {type(header).__name__}")
  return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def framing_bits(header: dict) -> int:
  """Bits of the file that are not message words: magic, lengths, header JSON, digest."""
  return 8 * (_FIXED_BYTES + len(_header_bytes(header)))


def pack(header: dict, words) -> bytes:
  """The file's bytes for a JSON-serializable header and message words (uint32 [W])."""
  head = _header_bytes(header)
  words = np.asarray(words)
  if words.ndim != 1 or not np.issubdtype(words.dtype, np.integer):
    raise ValueError(f"words must be a 1-D integer array, got {words.dtype} {words.shape}")
  body = (MAGIC + struct.pack("<I", len(head)) + head + struct.pack("<Q", words.size)
          + np.ascontiguousarray(words, dtype="<u4").tobytes())
  return body + hashlib.sha256(body).digest()


def unpack(blob: bytes, name: str = "compressed file") -> tuple:
  """(header dict, words uint32 [W]) of `pack`'s bytes; ContainerError naming what is wrong."""
  blob = bytes(blob)
  if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
    if blob[:5] == MAGIC[:5]:
      raise ContainerError(f"{name}: container version {blob[6] if len(blob) > 6 else '?'} is "
                           f"not supported (this vdm reads version {VERSION})")
    raise ContainerError(f"{name}: not a vdm compressed file (no {MAGIC[:5].decode()} magic "
                         f"at the start)")
  if len(blob) < _FIXED_BYTES:
    raise ContainerError(f"{name}: truncated ({len(blob)} bytes; even an empty file has "
                         f"{_FIXED_BYTES})")
  (h,) = struct.unpack_from("<I", blob, len(MAGIC))
  start = len(MAGIC) + 4
  if len(blob) < start + h + 8 + DIGEST_BYTES:
    raise ContainerError(f"{name}: truncated inside the header ({len(blob)} bytes, the header "
                         f"alone needs {start + h + 8 + DIGEST_BYTES})")
  (w,) = struct.unpack_from("<Q", blob, start + h)
  expected = start + h + 8 + 4 * w + DIGEST_BYTES
  if len(blob) != expected:
    raise ContainerError(f"{name}: {len(blob)} bytes, but its header says {expected} "
                         f"({'truncated' if len(blob) < expected else 'trailing bytes'})")
  if hashlib.sha256(blob[:-DIGEST_BYTES]).digest() != blob[-DIGEST_BYTES:]:
    raise ContainerError(f"{name}: the sha256 digest does not match its contents: the file is "
                         f"corrupted")
  try:
    header = json.loads(blob[start:start + h].decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:   # a digest over a bad header: written wrongly
    raise ContainerError(f"{name}: the header is not JSON ({e})") from None
  off = start + h + 8
  words = np.frombuffer(blob, dtype="<u4", count=w, offset=off).astype(np.uint32)
  return header, words
