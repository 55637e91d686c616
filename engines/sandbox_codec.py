"""Values and messages between the sandbox's checker and worker (stdlib only; see `engines.sandbox_harness`).

Values travel as tagged JSON (``["i", "2a"]``, ``["l", [...]]``, ...) of exact builtin types only:
`encode` refuses anything else (subclasses included) and `decode` rebuilds fresh builtin values or
raises `Rejected`, so nothing of the sender's making - no ``__eq__``, no ``__bool__`` - reaches the
receiver. Messages are length-prefixed JSON; `receive` refuses one above its size limit.
Inside the sandbox this source is placed in front of the harness's (one ``-c`` program).
"""

import json
import os
import struct

_HEADER = struct.Struct(">I")
_SEQ = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_SEQ_TYPES = {tag: kind for kind, tag in _SEQ.items()}
_MAX_DEPTH = 100


class Rejected(BaseException):
    """The checked program sent something that is not a plain value, or stopped answering.

    A BaseException: a test's ``except Exception`` cannot swallow it."""


class Gone(Rejected):
    """The worker closed its end (it exited or was killed)."""


def encode(value, depth=0):
    """Tagged JSON of an exact builtin value; TypeError for anything else."""
    kind = type(value)
    if depth > _MAX_DEPTH:
        raise TypeError("value nested too deeply to be checked")
    if value is None:
        return ["n"]
    if kind is bool:
        return ["b", value]
    if kind is int:
        return ["i", format(value, "x")]  # hex: no digit limit, exact
    if kind is float:
        return ["f", value.hex()]
    if kind is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["y", value.hex()]
    if kind in _SEQ:
        return [_SEQ[kind], [encode(v, depth + 1) for v in value]]
    if kind is dict:
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise TypeError(f"a value of type {kind.__name__} cannot be checked (only plain builtin values)")


def decode(node, depth=0):
    """The exact builtin value of a tagged JSON node; Rejected for anything malformed."""
    try:
        return _decode(node, depth)
    except Rejected:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as e:
        raise Rejected(f"malformed value from the checked program: {type(e).__name__}") from None


def _decode(node, depth):
    if depth > _MAX_DEPTH or type(node) is not list or not node or type(node[0]) is not str:
        raise Rejected("malformed value from the checked program")
    tag, rest = node[0], node[1:]
    if tag == "n" and not rest:
        return None
    if len(rest) == 1:
        item = rest[0]
        if tag == "b" and type(item) is bool:
            return item
        if tag == "i" and type(item) is str:
            return int(item, 16)
        if tag == "f" and type(item) is str:
            return float.fromhex(item)
        if tag == "s" and type(item) is str:
            return item
        if tag == "y" and type(item) is str:
            return bytes.fromhex(item)
        if tag in _SEQ_TYPES and type(item) is list:
            return _SEQ_TYPES[tag](_decode(v, depth + 1) for v in item)
        if tag == "d" and type(item) is list:
            pairs = [(_decode(p[0], depth + 1), _decode(p[1], depth + 1))
                     for p in item if type(p) is list and len(p) == 2]
            if len(pairs) != len(item):
                raise Rejected("malformed dict from the checked program")
            return dict(pairs)
    if tag == "c" and len(rest) == 2 and all(type(x) is str for x in rest):
        return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
    raise Rejected("malformed value from the checked program")


def send(fd, obj):
    data = json.dumps(obj, ensure_ascii=True).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd, limit):
    """The next message, or None at end of file; Rejected if it is too large or not JSON."""
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > limit:
        raise Rejected(f"message of {size} bytes from the checked program (limit {limit})")
    data = _read_exact(fd, size)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise Rejected("malformed message from the checked program") from None
