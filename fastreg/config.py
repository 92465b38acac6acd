"""Configuration: TOML file + command-line overrides, validated at start.

A bad value is refused with its key and the reason (ConfigError), never
half-applied. Relative paths are taken from the current directory, so the
embedded defaults work from a checkout (`conf/regfile.conf`, `var/`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from fastreg.errors import ConfigError

TRANSPORTS = ("udp", "tcp")
DURABILITY_MODES = ("sync", "periodic", "none")
DIGEST_ALGORITHMS = ("MD5", "SHA-256")
USER_BACKENDS = ("file", "postgres")
HOOK_FAILURE_STATUSES = (403, 480, 500, 503, 603)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    transport: str  # "udp" | "tcp"
    host: str  # IP literal, IPv6 without brackets
    port: int

    @property
    def family_is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_is_ipv6 else self.host
        return f"{self.transport}:{host}:{self.port}"


def parse_listen(text: str, key: str = "server.listen") -> ListenAddress:
    """`udp:127.0.0.1:5060`, `tcp:[::1]:5060`."""
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or transport not in TRANSPORTS:
        raise ConfigError(f"{key}: {text!r}: expected 'udp:HOST:PORT' or 'tcp:HOST:PORT'")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ConfigError(f"{key}: {text!r}: an IPv6 address is written [addr]:port")
        port_text = port_text[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ConfigError(f"{key}: {text!r}: missing port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: {text!r}: bad port {port_text!r}")
    return ListenAddress(transport, host, int(port_text))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[ListenAddress, ...] = (
        ListenAddress("udp", "127.0.0.1", 5060),
        ListenAddress("tcp", "127.0.0.1", 5060),
    )
    workers: int = 1  # 0 = one per core
    state_dir: str = "var"
    max_message_bytes: int = 65536
    max_headers: int = 100
    max_line_bytes: int = 8192
    udp_rcvbuf_bytes: int = 4 * 1024 * 1024
    udp_sndbuf_bytes: int = 4 * 1024 * 1024
    tcp_max_connections: int = 4096
    tcp_idle_timeout_s: float = 300.0  # no traffic at all (RFC 5626 keep-alives count)
    tcp_message_timeout_s: float = 10.0  # a started message must complete within this
    tcp_max_buffer_bytes: int = 131072
    log_level: str = "INFO"
    log_interval_s: float = 10.0  # rate limit for bad-input / auth-failure log lines


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    realm: str = "fastreg.local"
    domains: tuple[str, ...] = ()  # empty: any domain
    min_expires: int = 60
    default_expires: int = 3600
    max_expires: int = 3600
    max_contacts: int = 16  # per AOR; 0 = unlimited
    allow_third_party: bool = False  # may an authenticated user change another AOR?


@dataclass(frozen=True, slots=True)
class AuthConfig:
    secret: str = ""
    secret_file: str = ""
    nonce_ttl: int = 300
    algorithms: tuple[str, ...] = ("MD5",)
    throttle_failures: int = 20  # per (source address, username) within the window; 0 = off
    throttle_window_s: float = 60.0
    throttle_block_s: float = 120.0
    trusted_peers: tuple[str, ...] = ()  # SBC addresses / networks
    # Failures per source address alone (any username); 0 = off, the default,
    # because behind an SBC every user arrives from one address. Trusted peers
    # are exempt.
    throttle_source_failures: int = 0


@dataclass(frozen=True, slots=True)
class UsersConfig:
    backend: str = "file"
    file: str = "conf/regfile.conf"


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = ""  # libpq connection string or URI; empty: no database
    pool_size: int = 4  # connections per worker
    connect_timeout_s: float = 2.0
    statement_timeout_s: float = 1.0  # a query slower than this fails (503 for a REGISTER)
    auth_cache_ttl_s: float = 10.0  # how long a user_auth answer is kept per worker
    auth_cache_size: int = 100000  # users cached per worker
    retry_after_s: int = 5  # Retry-After of the 503 sent while the database is unreachable
    mirror_queue: int = 10000  # user_register/user_unregister writes waiting for the database
    cdr_critical: bool = False  # true: no new calls while CDRs cannot be written (Yate's critical)
    cdr_queue: int = 10000  # best-effort CDR writes waiting for the database
    notify_channel: str = ""  # LISTEN channel: NOTIFY with a username drops it from the caches at once
    queries: tuple[tuple[str, str], ...] = ()  # [postgres.queries]: (name, SQL), sorted by name


@dataclass(frozen=True, slots=True)
class HooksConfig:
    module: str = ""  # "package.module" or a path to a .py file; empty: no hooks
    timeout_s: float = 1.0  # a hook slower than this counts as failed
    failure_status: int = 500  # the answer when a hook raises or times out


@dataclass(frozen=True, slots=True)
class LocationConfig:
    durability: str = "periodic"
    map_size_mb: int = 1024
    # LMDB MDB_WRITEMAP: pages are written in the shared map instead of
    # through pwrite(2), ~16 % of a worker's CPU per registration under load.
    # A crash of fastreg still loses nothing committed; what changes is the
    # power-cut caveat of periodic/none (see README, "Durability").
    writemap: bool = True
    sync_interval_s: float = 0.2  # for durability = "periodic"
    sweep_interval_s: float = 1.0


# -- [routing]: requests for a user (redirect or stateless proxy), calls, CDRs --

ROUTING_MODES = ("redirect", "proxy")


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    mode: str = "redirect"  # "redirect": 302 with the contacts; "proxy": stateless forwarding (RFC 3261 16.11)
    # host:port written in our Via and Record-Route; empty: the first listen
    # address of the transport (which must then not be a wildcard address).
    advertise: str = ""
    record_route: bool = True  # proxy mode: stay on the path of in-dialog requests (needed to track calls)
    # Digest (407) for calls from sources that are not auth.trusted_peers;
    # off by default: behind an SBC, authenticating callers is the SBC's job.
    authenticate_callers: bool = False
    max_calls_per_user: int = 0  # default for users without maxcalls=; 0 = unlimited
    max_call_duration_s: float = 7200.0  # a call with no end seen is closed after this
    max_setup_s: float = 300.0  # an INVITE with no final response seen is closed after this
    cdr_file: str = ""  # JSON Lines; empty: state_dir/cdr.jsonl; "-": no file sink
    cdr_max_bytes: int = 100 * 1024 * 1024  # rotate the file past this size (cdr.jsonl.1, .2, ...)
    cdr_keep: int = 5  # rotated files kept
    cdr_critical: bool = False  # when the file cannot be written, refuse new calls with 503


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    users: UsersConfig = field(default_factory=UsersConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    @property
    def location_path(self) -> str:
        return os.path.join(self.server.state_dir, "location")

    @property
    def cdr_path(self) -> str | None:
        """The JSON Lines CDR file, or None when routing.cdr_file is "-"."""
        name = self.routing.cdr_file
        if name == "-":
            return None
        return name or os.path.join(self.server.state_dir, "cdr.jsonl")


_SECTIONS = {
    "server": ServerConfig,
    "registrar": RegistrarConfig,
    "auth": AuthConfig,
    "users": UsersConfig,
    "location": LocationConfig,
    "postgres": PostgresConfig,
    "hooks": HooksConfig,
    "routing": RoutingConfig,
}


def _coerce(section: str, name: str, expected: Any, value: Any) -> Any:
    key = f"{section}.{name}"
    if section == "server" and name == "listen":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a non-empty list of 'udp:HOST:PORT' strings")
        return tuple(parse_listen(v, key) for v in value)
    if section == "postgres" and name == "queries":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{key}: expected a table of query name = \"SQL\"")
        return tuple(sorted(value.items()))
    default_type = type(expected)
    if default_type is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
    if default_type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if default_type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if default_type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_mapping(data: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for section, values in data.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"[{section}]: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a table")
        defaults = cls()
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for name, value in values.items():
            if name not in known:
                raise ConfigError(f"{section}.{name}: unknown key")
            kwargs[name] = _coerce(section, name, getattr(defaults, name), value)
        sections[section] = replace(defaults, **kwargs)
    config = Config(**sections)
    validate(config)
    return config


def load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file (None: the embedded defaults) and apply overrides like {"server.workers": 2}."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        data.setdefault(section, {})[name] = value
    return from_mapping(data)


def validate(config: Config) -> None:
    server, reg, auth, loc = config.server, config.registrar, config.auth, config.location
    if server.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"server.log_level: {server.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if server.workers < 0:
        raise ConfigError("server.workers: must be 0 (one per core) or more")
    if not server.state_dir:
        raise ConfigError("server.state_dir: must not be empty")
    if server.max_message_bytes < 1024:
        raise ConfigError("server.max_message_bytes: must be at least 1024")
    if server.max_headers < 10 or server.max_line_bytes < 256:
        raise ConfigError("server.max_headers / max_line_bytes: too small to carry a REGISTER")
    if server.tcp_max_connections < 1 or server.tcp_max_buffer_bytes < server.max_message_bytes:
        raise ConfigError("server.tcp_max_buffer_bytes: must be at least server.max_message_bytes")
    if not reg.realm or any(c in reg.realm for c in '"\\\r\n'):
        raise ConfigError("registrar.realm: must be a non-empty string without quotes or line breaks")
    if not 0 <= reg.min_expires <= reg.default_expires <= reg.max_expires:
        raise ConfigError(
            "registrar.min_expires/default_expires/max_expires: need min <= default <= max "
            f"(got {reg.min_expires}, {reg.default_expires}, {reg.max_expires})"
        )
    if reg.max_contacts < 0:
        raise ConfigError("registrar.max_contacts: must be >= 0")
    if auth.nonce_ttl < 10:
        raise ConfigError("auth.nonce_ttl: must be at least 10 seconds")
    if not auth.algorithms:
        raise ConfigError("auth.algorithms: at least one algorithm")
    for algorithm in auth.algorithms:
        if algorithm not in DIGEST_ALGORITHMS:
            raise ConfigError(f"auth.algorithms: {algorithm!r} is not one of {', '.join(DIGEST_ALGORITHMS)}")
    for peer in auth.trusted_peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            raise ConfigError(f"auth.trusted_peers: {peer!r} is not an address or network") from None
    if config.users.backend not in USER_BACKENDS:
        raise ConfigError(f"users.backend: {config.users.backend!r} is not one of {', '.join(USER_BACKENDS)}")
    _validate_postgres(config)
    hooks = config.hooks
    if hooks.timeout_s <= 0:
        raise ConfigError("hooks.timeout_s: must be more than 0")
    if hooks.failure_status not in HOOK_FAILURE_STATUSES:
        raise ConfigError(f"hooks.failure_status: must be one of {', '.join(map(str, HOOK_FAILURE_STATUSES))}")
    if loc.durability not in DURABILITY_MODES:
        raise ConfigError(f"location.durability: {loc.durability!r} is not one of {', '.join(DURABILITY_MODES)}")
    if loc.map_size_mb < 1:
        raise ConfigError("location.map_size_mb: must be at least 1")
    validate_routing(config)


def _validate_postgres(config: Config) -> None:
    from fastreg.sqltemplate import compile_queries

    pg = config.postgres
    queries = compile_queries(pg.queries)  # ConfigError names the query
    if config.users.backend == "postgres":
        if not pg.dsn:
            raise ConfigError('postgres.dsn: required with users.backend = "postgres"')
        if "user_auth" not in queries:
            raise ConfigError('postgres.queries.user_auth: required with users.backend = "postgres"')
    elif "user_auth" in queries:
        raise ConfigError('postgres.queries.user_auth: used only with users.backend = "postgres"')
    if queries and not pg.dsn:
        raise ConfigError("postgres.dsn: required when [postgres.queries] has queries")
    if pg.pool_size < 1:
        raise ConfigError("postgres.pool_size: must be at least 1")
    if pg.connect_timeout_s <= 0 or pg.statement_timeout_s <= 0:
        raise ConfigError("postgres.connect_timeout_s / statement_timeout_s: must be more than 0")
    if pg.auth_cache_ttl_s < 0:
        raise ConfigError("postgres.auth_cache_ttl_s: must be 0 (no cache) or more")
    if pg.auth_cache_size < 1 or pg.mirror_queue < 1 or pg.cdr_queue < 1:
        raise ConfigError("postgres.auth_cache_size / mirror_queue / cdr_queue: must be at least 1")
    if not 1 <= pg.retry_after_s <= 3600:
        raise ConfigError("postgres.retry_after_s: must be 1 to 3600")
    if pg.notify_channel and not pg.notify_channel.replace("_", "a").isalnum():
        raise ConfigError("postgres.notify_channel: letters, digits and '_' only")



def parse_hostport(text: str, key: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (a host name is allowed: it is only written into headers)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"{key}: {text!r}: expected [IPv6]:PORT")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or any(c in host for c in ' ;,<>"@'):
        raise ConfigError(f"{key}: {text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: {text!r}: bad port {port_text!r}")
    return host, int(port_text)


def validate_routing(config: Config) -> None:
    routing = config.routing
    if routing.mode not in ROUTING_MODES:
        raise ConfigError(f"routing.mode: {routing.mode!r} is not one of {', '.join(ROUTING_MODES)}")
    if routing.advertise:
        parse_hostport(routing.advertise, "routing.advertise")
    elif routing.mode == "proxy":
        for address in config.server.listen:
            if address.host in ("0.0.0.0", "::"):
                raise ConfigError("routing.advertise: required in proxy mode when server.listen has a wildcard "
                                  f"address ({address}): the Via and Record-Route must name a reachable address")
    if routing.max_calls_per_user < 0:
        raise ConfigError("routing.max_calls_per_user: must be >= 0 (0 = unlimited)")
    if routing.max_call_duration_s <= 0 or routing.max_setup_s <= 0:
        raise ConfigError("routing.max_call_duration_s / max_setup_s: must be > 0")
    if routing.cdr_max_bytes < 4096:
        raise ConfigError("routing.cdr_max_bytes: must be at least 4096")
    if routing.cdr_keep < 1:
        raise ConfigError("routing.cdr_keep: must be at least 1")
