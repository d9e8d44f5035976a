"""Read the float tensors of a TensorFlow checkpoint (a "tensor bundle") without TensorFlow.

A bundle is `<prefix>.index`, an SSTable (LevelDB table format) mapping each variable name to a
BundleEntryProto, and `<prefix>.data-00000-of-0000N`, the raw little-endian tensor bytes. Only
the subset of both formats that checkpoints written by `tf.train.Saver` use is read: uncompressed
blocks, one or more shards, dense float32 tensors.
"""

from __future__ import annotations

import struct

import numpy as np

from model.errors import InputError
from model.io import read_bytes, uri_join

SSTABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
DT_FLOAT = 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _block(table: bytes, handle: bytes) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if table[offset + size] != 0:  # the 5-byte trailer starts with the compression type
        raise InputError("compressed SSTable blocks are not supported")
    return table[offset : offset + size]


def _block_entries(block: bytes):
    """(key, value) pairs of one block; keys are prefix-compressed against the previous key."""
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        size, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + size]
        pos += size


def _sstable(table: bytes) -> dict[bytes, bytes]:
    footer = table[-FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != SSTABLE_MAGIC:
        raise InputError("not a TensorFlow checkpoint index (bad SSTable magic)")
    _, pos = _varint(footer, 0)  # skip the metaindex handle
    _, pos = _varint(footer, pos)
    index = _block(table, footer[pos:])
    return {key: value for _, handle in _block_entries(index) for key, value in _block_entries(_block(table, handle))}


def _fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints, fixed32 and length-delimited only."""
    out, pos = [], 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 5:
            value, pos = message[pos : pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(message, pos)
            value, pos = message[pos : pos + size], pos + size
        else:
            raise InputError(f"unexpected protobuf wire type {wire}")
        out.append((number, value))
    return out


def _entry(proto: bytes) -> tuple[int, tuple[int, ...], int, int, int]:
    """BundleEntryProto -> (dtype, shape, shard, offset, size)."""
    fields = dict(dtype=0, shard=0, offset=0, size=0)
    shape: list[int] = []
    names = {1: "dtype", 3: "shard", 4: "offset", 5: "size"}
    for number, value in _fields(proto):
        if number == 2:  # TensorShapeProto: repeated Dim (field 2) with size (field 1)
            shape = [dict(_fields(dim)).get(1, 0) for n, dim in _fields(value) if n == 2]
        elif number in names:
            fields[names[number]] = value
    return fields["dtype"], tuple(shape), fields["shard"], fields["offset"], fields["size"]


def read_tf_checkpoint(prefix: str, skip: tuple[str, ...] = ("Adam", "power")) -> dict[str, np.ndarray]:
    """Every float32 variable of the checkpoint at `prefix` (a path or URI, without `.index`),
    except optimizer slots whose names contain a string in `skip`."""
    entries = _sstable(read_bytes(prefix + ".index"))
    header = dict(_fields(entries.pop(b"")))
    shards = header.get(1, 1)
    data = [read_bytes(f"{prefix}.data-{i:05d}-of-{shards:05d}") for i in range(shards)]
    tensors = {}
    for raw_name, proto in entries.items():
        name = raw_name.decode()
        if any(s in name for s in skip):
            continue
        dtype, shape, shard, offset, size = _entry(proto)
        if dtype != DT_FLOAT:
            raise InputError(f"{name}: only float32 variables are supported (dtype {dtype})")
        tensors[name] = np.frombuffer(data[shard], "<f4", count=size // 4, offset=offset).reshape(shape)
    return tensors


def checkpoint_prefix(directory: str) -> str:
    """musicnn and other `Saver` checkpoints saved to a directory path have an empty file prefix."""
    return uri_join(directory, "")
