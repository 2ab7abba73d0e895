"""sluiced.toml: the daemon's own settings.

Relative paths are resolved against the directory of the config file, so the
example in ``etc/`` runs from a clone. Unknown keys are an error, as in
policy files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
import tomli

if TYPE_CHECKING:
    from .state.base import StoreSettings


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message says where."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


Count = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConnectionLimits(_Section):
    """An HTTP listener's connection caps (see daemon/serving.py)."""

    max_connections: Count = 256
    # connections of one peer (uid, address) that have not completed a request as a known client
    max_unproven_per_peer: Count = 64
    # seconds from connecting (TLS included) to the first request's whole head
    first_request_timeout: Seconds = 5.0


class AdminConfig(ConnectionLimits):
    # one uid may fill the socket: its peers are the operators and their tools,
    # a hundred of whose requests at once (a script, a fleet) are routine
    max_unproven_per_peer: Count = 256
    socket: str = "/run/sluice/admin.sock"
    mode: str = "0660"
    group: str = ""


class PostfixConfig(_Section):
    socket: str = "/run/sluice/policy.sock"
    mode: str = "0666"
    listen: str = ""
    tenant_attribute: str = "sasl_username"
    strip_realm: bool = True  # a SASL login user@realm names the tenant "user"
    on_hold: Literal["defer", "hold"] = "defer"
    max_connections: Count = 1024
    max_connections_per_peer: Count = 512  # per uid on the socket, per address on TCP


class HttpConfig(ConnectionLimits):
    listen: str = ""
    tokens_file: str = ""
    trusted_hosts: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""


class ReloadConfig(_Section):
    debounce_ms: int = 50


class LogConfig(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class EtcdConfig(_Section):
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/sluice/"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""


class StateConfig(_Section):
    backend: Literal["files", "etcd"] = "files"
    etcd: EtcdConfig = EtcdConfig()


class Config(_Section):
    policy_dir: str = "/etc/sluice/policy.d"
    state_dir: str = "/var/lib/sluice"
    admin: AdminConfig = AdminConfig()
    postfix: PostfixConfig = PostfixConfig()
    http: HttpConfig = HttpConfig()
    reload: ReloadConfig = ReloadConfig()
    log: LogConfig = LogConfig()
    state: StateConfig = StateConfig()
    # Where the file was read from; relative paths resolve against its directory.
    base_dir: str = ""

    def path(self, value: str) -> Path:
        """Resolve a configured path against the config file's directory."""
        return Path(os.path.normpath(Path(self.base_dir, value))) if value else Path()

    @property
    def policy_path(self) -> Path:
        return self.path(self.policy_dir)

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)

    def store_settings(self) -> StoreSettings:
        """``[state]`` as ``state.open_store`` takes it, its paths resolved."""
        from .state.base import EtcdSettings, StoreSettings  # only for those that open a store

        etcd = self.state.etcd

        def file(value: str) -> Path | None:
            return self.path(value) if value else None

        return StoreSettings(
            state_dir=self.state_path,
            backend=self.state.backend,
            etcd=EtcdSettings(
                endpoints=etcd.endpoints,
                prefix=etcd.prefix,
                ca_file=file(etcd.ca_file),
                cert_file=file(etcd.cert_file),
                key_file=file(etcd.key_file),
                username=etcd.username,
                password=etcd.password,
            ),
        )

    @property
    def admin_socket(self) -> Path | None:
        return self.path(self.admin.socket) if self.admin.socket else None

    @property
    def postfix_socket(self) -> Path | None:
        return self.path(self.postfix.socket) if self.postfix.socket else None


def _mode(value: str, key: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ConfigError(f"{key} must be an octal mode such as \"0660\", got {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{key} must be between 0000 and 0777, got {value!r}")
    return mode


def load_config(path: str | Path) -> Config:
    """Read and check a config file; raises ConfigError naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    if "base_dir" in raw:
        raise ConfigError(f"{path}: unknown key base_dir")
    raw["base_dir"] = str(path.resolve().parent)
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _mode(config.admin.mode, "admin.mode")
    _mode(config.postfix.mode, "postfix.mode")
    if config.reload.debounce_ms < 0:
        raise ConfigError(f"{path}: reload.debounce_ms must not be negative")
    return config


def socket_mode(value: str) -> int:
    return _mode(value, "mode")
