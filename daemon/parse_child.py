"""The parser process: one policy file's bytes in, its parsed form out, compact.

How this works
--------------
``python -m sluice.daemon.parse_child NAME`` reads the bytes of the policy
file NAME on stdin, parses them exactly as the daemon would in process
(``policy_dir.parse_file``: every problem with its file, line and key path),
writes the result to stdout and exits 0. ``... NAME PART PARTS`` parses
only that piece of the file (``files.parse_policy_part``), so that several
processes share a large file; it writes nothing if the file is not one to
read in pieces. Whatever the parse made and threw
away (the TOML document, the source text) dies with the process, so neither
the daemon's heap nor its interpreter lock ever holds it.

The result is compact and quick to take back in pieces: the file's
suspensions as msgpack arrays of at most ``CHUNK`` entries each, and the rest
of the file (its other entries, few, and its problems) pickled. The daemon
decodes one piece at a time (``unpack``), so that no single call holds its
interpreter for long.

This module imports nothing of trio or the daemon's shell: the process
starts in the time the policy core takes to import.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator

import msgspec

from sluice.policy.files import ParsedFile, parse_policy_part
from sluice.policy.model import Suspension

from .policy_dir import parse_file

CHUNK = 1_000  # suspensions per piece: about a millisecond to decode


class Packed(msgspec.Struct, array_like=True):
    rest: bytes  # pickle of the ParsedFile without its suspensions
    suspensions: list[bytes]  # msgpack of tuple[Suspension, ...], CHUNK at a time


_encode = msgspec.msgpack.Encoder().encode
_decode_packed = msgspec.msgpack.Decoder(Packed).decode
_decode_suspensions = msgspec.msgpack.Decoder(tuple[Suspension, ...]).decode


def pack(parsed: ParsedFile) -> bytes:
    """``parsed`` as bytes for ``unpack``."""
    s = parsed.suspensions
    pieces = [_encode(s[i : i + CHUNK]) for i in range(0, len(s), CHUNK)]
    rest = pickle.dumps(msgspec.structs.replace(parsed, suspensions=()), protocol=pickle.HIGHEST_PROTOCOL)
    return _encode(Packed(rest, pieces))


def unpack(data: bytes) -> Iterator[ParsedFile | None]:
    """``pack``'s input again: yields None after each piece decoded, then the file.

    A caller that must not hold its thread for long takes the pieces one at
    a time; ``unpacked`` takes them all.
    """
    packed = _decode_packed(data)
    suspensions: list[Suspension] = []
    for piece in packed.suspensions:
        suspensions.extend(_decode_suspensions(piece))
        yield None
    rest: ParsedFile = pickle.loads(packed.rest)
    yield msgspec.structs.replace(rest, suspensions=tuple(suspensions))


def unpacked(data: bytes) -> ParsedFile:
    """``pack``'s input again, in one go."""
    *_, parsed = unpack(data)
    assert parsed is not None
    return parsed


def parse_part(data: bytes, name: str, part: int, parts: int) -> ParsedFile | None:
    """``files.parse_policy_part`` of a file's bytes; None for anything it cannot
    tell (the whole file, parsed as one, then says what is wrong)."""
    try:
        return parse_policy_part(data.decode("utf-8"), name, part, parts)
    except Exception:
        return None


def _first_to_go() -> None:
    """Should the system run out of memory, let the kernel end this process, not the daemon."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def main() -> None:
    _first_to_go()
    name, *part = sys.argv[1:]
    data = sys.stdin.buffer.read()
    parsed = parse_part(data, name, int(part[0]), int(part[1])) if part else parse_file(data, name)
    if parsed is None:
        return
    sys.stdout.buffer.write(pack(parsed))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
