"""Reading the policy directory: every ``*.toml`` directly inside, in name order.

A PolicyReader remembers each file's content digest and parsed result, so a
reload parses again only the files whose bytes changed. A file whose
device, inode, size and modification time are as last read, and was not
written in the last few seconds, is not even read again: a small edit next
to a 100,000-entry file reads the small file. (Within a few seconds of a
write the time may not tell two writes apart, so such a file is read and
its digest compared, as git does with "racily clean" files.) Reading is
plain blocking I/O; the daemon calls it in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from sluice.policy.errors import FileProblem, PolicyLoadError
from sluice.policy.files import ParsedFile, PolicySet, combine, is_policy_file, parse_policy


def parse_bytes(data: bytes, name: str) -> ParsedFile:
    """Parse a policy file's bytes; text that is not UTF-8 is a problem, not a crash."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return ParsedFile(name=name, problems=(FileProblem(name, line, "", "file is not valid UTF-8"),))
    return parse_policy(text, name)


def _parse_safely(data: bytes, name: str) -> ParsedFile:
    """``parse_bytes``, with whatever it raises turned into the file's problem.

    Any failure to read a file is a failed reload that names the file, never
    a crash of the reload: a TOML text nested thousands deep exhausts the
    parser's recursion, for one.
    """
    try:
        return parse_bytes(data, name)
    except RecursionError:
        message = "nested too deeply to read (arrays or inline tables inside each other)"
    except Exception as exc:
        message = f"cannot be read: {type(exc).__name__}: {exc}"
    return ParsedFile(name=name, problems=(FileProblem(name, None, "", message),))


RACY = 3.0  # seconds after a write within which its modification time is not trusted


class PolicyReader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # name -> (stat stamp, content digest, parsed file)
        self._cache: dict[str, tuple[tuple[int, ...], bytes, ParsedFile]] = {}
        self.parsed_last = 0  # how many files the last read() had to parse
        self.mtimes: dict[str, float] = {}  # file name -> modification time, as last read
        self.last: PolicySet | None = None  # the last combine that succeeded

    def names(self) -> list[str]:
        """The policy files in the directory, in name order."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            raise PolicyLoadError(
                [FileProblem(str(self.directory), None, "", "policy directory does not exist")]
            ) from None
        except NotADirectoryError:
            raise PolicyLoadError(
                [FileProblem(str(self.directory), None, "", "policy path is not a directory")]
            ) from None
        except OSError as exc:  # EMFILE, EACCES, EIO: say so; the old policy stays
            raise PolicyLoadError(
                [FileProblem(str(self.directory), None, "", f"cannot list the policy directory: {exc.strerror or exc}")]
            ) from None
        return sorted(
            e.name for e in entries if is_policy_file(e.name) and e.is_file(follow_symlinks=True)
        )

    def read(self) -> list[ParsedFile]:
        """Parse every policy file (from cache where unchanged); problems stay inside."""
        files: list[ParsedFile] = []
        cache: dict[str, tuple[tuple[int, ...], bytes, ParsedFile]] = {}
        mtimes: dict[str, float] = {}
        parsed = 0
        now = time.time()
        for name in self.names():
            path = self.directory / name
            try:
                st = path.stat()
                mtimes[name] = st.st_mtime
                stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                hit = self._cache.get(name)
                if hit is not None and hit[0] == stamp and now - st.st_mtime > RACY:
                    cache[name] = hit  # unchanged, and not written too recently to tell: not read
                    files.append(hit[2])
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed between listing and reading: it is gone
            except OSError as exc:
                files.append(ParsedFile(name=name, problems=(FileProblem(name, None, "", f"cannot read: {exc.strerror}"),)))
                continue
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if hit is not None and hit[1] == digest:
                result = hit[2]
            else:
                result = _parse_safely(data, name)
                parsed += 1
            cache[name] = (stamp, digest, result)
            files.append(result)
        self._cache = cache
        self.mtimes = mtimes
        self.parsed_last = parsed
        return files

    def load(self) -> PolicySet:
        """The combined policy; raises PolicyLoadError listing every problem.

        Checked against the last policy loaded, so only changed files are checked again.
        """
        self.last = combine(self.read(), self.last)
        return self.last
