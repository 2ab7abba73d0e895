"""SASL logins for a throw-away Postfix: the server side of Dovecot's auth protocol.

Postfix's smtpd with ``smtpd_sasl_type = dovecot`` asks a Dovecot auth
socket (``smtpd_sasl_path``) whether a login is good. This answers that
protocol (version 1: ``VERSION``, ``MECH``, ``DONE`` to greet; ``AUTH`` with
an initial ``resp=``, answered ``OK`` with ``user=``) for ``PLAIN`` logins
whose password is the one given, so a test can log in as any tenant and
smtpd logs ``sasl_method=PLAIN, sasl_username=<login>`` and sends
``sasl_username`` to its policy service, as with a real Dovecot. No Dovecot
package is needed. Standard library only; one thread, one connection at a
time per thread (smtpd keeps one connection per process).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from pathlib import Path


class DovecotAuth:
    """Listens on the unix socket ``path`` (mode 0666, so smtpd, user postfix, connects)."""

    def __init__(self, path: Path, password: str = "secret") -> None:
        self.path = Path(path)
        self.password = password
        self.logins: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def __enter__(self) -> DovecotAuth:
        if self.path.exists():
            self.path.unlink()
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self._sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rw", newline="\n") as stream:
            stream.write("VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\t" + "0" * 32 + "\nDONE\n")
            stream.flush()
            for line in stream:
                fields = line.rstrip("\n").split("\t")
                if fields[0] != "AUTH" or len(fields) < 3:
                    continue  # VERSION, CPID
                ident = fields[1]
                params = dict(f.partition("=")[::2] for f in fields[3:])
                login = self._login(fields[2], params.get("resp", ""))
                if login is None:
                    stream.write(f"FAIL\t{ident}\treason=bad login\n")
                else:
                    self.logins.append(login)
                    stream.write(f"OK\t{ident}\tuser={login}\n")
                stream.flush()

    def _login(self, mechanism: str, response: str) -> str | None:
        if mechanism.upper() != "PLAIN":
            return None
        try:
            _, login, password = base64.b64decode(response).decode().split("\0")
        except ValueError:
            return None
        return login if password == self.password else None
