"""Reading the policy directory: every ``*.toml`` directly inside, in name order.

A PolicyReader remembers each file's content digest and parsed result, so a
reload parses again only the files whose bytes changed. A file whose
device, inode, size and modification time are as last read, and was not
written in the last few seconds, is not even read again: a small edit next
to a 100,000-entry file reads the small file. (Within a few seconds of a
write the time may not tell two writes apart, so such a file is read and
its digest compared, as git does with "racily clean" files.) Reading is
plain blocking I/O; the daemon calls it in a worker thread.

``read`` parses what changed in the calling thread (``sluiced --check``,
``sluicectl validate``). The daemon instead takes the two halves apart:
``scan`` says which files are as last parsed and hands over the bytes of the
others, which the daemon parses where it sees fit (a large file in a child
process, see ``parsing.py``), and ``take`` puts the results in order and
remembers them.
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


def parse_file(data: bytes, name: str) -> ParsedFile:
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


class Scan:
    """One look at the policy directory: each file, in name order, as
    (name, (stat stamp, digest, parsed file or None: to parse)); the bytes to parse by name."""

    def __init__(self) -> None:
        self.found: list[tuple[str, tuple[tuple[int, ...] | None, bytes, ParsedFile | None]]] = []
        self.to_parse: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}


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

    def scan(self) -> Scan:
        """Look at every policy file: which are as last parsed, and the bytes of the others."""
        scan = Scan()
        now = time.time()
        for name in self.names():
            path = self.directory / name
            try:
                st = path.stat()
                scan.mtimes[name] = st.st_mtime
                stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                hit = self._cache.get(name)
                if hit is not None and hit[0] == stamp and now - st.st_mtime > RACY:
                    scan.found.append((name, hit))  # unchanged, and not written too recently to tell: not read
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed between listing and reading: it is gone
            except OSError as exc:
                problem = FileProblem(name, None, "", f"cannot read: {exc.strerror}")
                scan.found.append((name, (None, b"", ParsedFile(name=name, problems=(problem,)))))
                continue
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if hit is not None and hit[1] == digest:
                scan.found.append((name, (stamp, digest, hit[2])))
            else:
                scan.found.append((name, (stamp, digest, None)))
                scan.to_parse[name] = data
        return scan

    def take(self, scan: Scan, parsed: dict[str, ParsedFile], again: frozenset[str] = frozenset()) -> list[ParsedFile]:
        """The files of ``scan``, with ``parsed`` the results of its files to parse,
        remembered for the next scan but for the names in ``again`` (a failure
        that says nothing of the bytes, such as a parser process that died:
        they are parsed again next time)."""
        files: list[ParsedFile] = []
        cache: dict[str, tuple[tuple[int, ...], bytes, ParsedFile]] = {}
        for name, (stamp, digest, result) in scan.found:
            if result is None:
                result = parsed[name]
            if stamp is not None and name not in again:
                cache[name] = (stamp, digest, result)
            files.append(result)
        self._cache = cache
        self.mtimes = scan.mtimes
        self.parsed_last = len(scan.to_parse)
        return files

    def read(self) -> list[ParsedFile]:
        """Parse every policy file (from cache where unchanged), in this thread; problems stay inside."""
        scan = self.scan()
        return self.take(scan, {name: parse_file(data, name) for name, data in scan.to_parse.items()})

    def combine(self, files: list[ParsedFile]) -> PolicySet:
        """``files`` combined; raises PolicyLoadError listing every problem.

        Checked against the last policy loaded, so only changed files are checked again.
        """
        self.last = combine(files, self.last)
        return self.last

    def load(self) -> PolicySet:
        """The combined policy, every file parsed in this thread; raises PolicyLoadError."""
        return self.combine(self.read())
