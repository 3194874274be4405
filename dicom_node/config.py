"""Node configuration: TOML file -> validated, immutable dataclasses.

Every problem is reported as one :class:`ConfigError` line naming the key, so that
``dicom-node serve --config FILE`` can print it and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dicom_node.processing import SeriesKind
from pinn_engine.perfusion import PERFUSION_METHODS


class ConfigError(ValueError):
    """An invalid configuration; the message is a single line for the operator."""


def _one_of(values: Iterable[str]) -> str:
    """'a, b or c' for an error message."""
    values = [str(v) for v in values]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash


def check_ae_title(value: Any, where: str) -> str:
    """Return ``value`` if it is a valid AE title (1-16 chars, no backslash/control)."""
    if not isinstance(value, str) or not _AE_RE.match(value) or not value.strip():
        raise ConfigError(f"{where}: invalid AE title {value!r} (1-16 printable ASCII characters, no backslash)")
    return value.strip()


def _check_port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: invalid port {value!r} (an integer 1-65535)")
    return value


@dataclass(frozen=True)
class NodeSection:
    ae_title: str = "PINN_NODE"
    host: str = "127.0.0.1"
    port: int = 11112
    storage: str = "var"
    max_associations: int = 16
    max_pdu_size: int = 131072
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    index_synchronous: str = "normal"  # "full": fsync the index on every commit too
    http_port: int = 0  # > 0: /health and /metrics over HTTP on host:http_port
    tls_port: int = 0  # > 0: also listen with TLS (mutual certificates, [security] tls_*) on this port


@dataclass(frozen=True)
class SeriesSection:
    stable_seconds: float = 10.0
    check_interval_s: float = 1.0
    # a study's T2 stack is processed once no further T2 series of the study has completed for
    # this long (one series per breath-hold arrives over minutes); a later one re-processes it
    stack_seconds: float = 30.0


@dataclass(frozen=True)
class IndexSection:
    # "" (default): SQLite under [node] storage; "postgresql://USER@HOST:PORT/DB": a PostgreSQL
    # index that several nodes can share (dicom_node.index_backends)
    url: str = ""


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False  # associate with TLS ([security] tls_* certificates)

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class RoutingSection:
    send_results_to: tuple[str, ...] = ()  # where derived results go
    forward_series_to: tuple[str, ...] = ()  # where completed series that are not processed go, unchanged


@dataclass(frozen=True)
class SecuritySection:
    allowed_calling_aes: tuple[str, ...] = ()  # empty: any calling AE title
    audit_log: str = ""  # JSON lines; default <storage>/log/audit.jsonl
    tls_certificate: str = ""  # PEM certificate of the node (TLS server and client)
    tls_private_key: str = ""  # PEM key of that certificate
    tls_ca_certificates: str = ""  # PEM bundle: peers must present a certificate issued by one of these
    tls_verify_hostname: bool = False  # also match the destination's host name against its certificate


@dataclass(frozen=True)
class JobsSection:
    workers: int = 1
    max_attempts: int = 5
    retry_backoff_s: float = 5.0
    retry_backoff_max_s: float = 300.0
    poll_interval_s: float = 0.5


@dataclass(frozen=True)
class ClassifyRule:
    """[[classify]]: a series matching every given regular expression gets ``kind``."""

    kind: str
    series_description: str = ""
    protocol_name: str = ""
    sop_class_uid: str = ""


@dataclass(frozen=True)
class EngineSection:
    t2_method: str = "pinn"  # "pinn" (default) or "nlls" (fast reference)
    confidence: float = 0.95  # of the per-pixel and per-segment bounds
    preload: bool = True  # load the network at start-up, not when the first series arrives
    perfusion_method: str = "nlls"  # 2CXM fit: one of pinn_engine.perfusion.PERFUSION_METHODS
    hematocrit: float = 0.45  # MBF = Fp / (1 - Hct) / density
    myocardial_density_g_ml: float = 1.05
    saturation_delay_ms: float = 100.0  # perfusion SR delay when the headers carry none
    # main / pre-bolus contrast dose when the headers do not say (ContrastBolusTotalDose or
    # ContrastBolusVolume in both series); 0: a pre-bolus series without doses is not used
    prebolus_dose_ratio: float = 0.0


@dataclass(frozen=True)
class SendSection:
    """How the node's storage SCU behaves towards destinations."""

    dimse_timeout_s: float = 15.0
    acse_timeout_s: float = 15.0
    reassociations: int = 3
    backoff_s: float = 0.5


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    series: SeriesSection = field(default_factory=SeriesSection)
    destinations: tuple[Destination, ...] = ()
    routing: RoutingSection = field(default_factory=RoutingSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    jobs: JobsSection = field(default_factory=JobsSection)
    send: SendSection = field(default_factory=SendSection)
    engine: EngineSection = field(default_factory=EngineSection)
    classify: tuple[ClassifyRule, ...] = ()
    index: IndexSection = field(default_factory=IndexSection)

    @property
    def storage_dir(self) -> Path:
        return Path(self.node.storage)

    @property
    def audit_path(self) -> Path:
        return Path(self.security.audit_log) if self.security.audit_log else self.storage_dir / "log" / "audit.jsonl"

    def destination(self, name: str) -> Destination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)

    def destination_by_ae(self, ae_title: str) -> Destination | None:
        """The configured destination with this AE title (C-MOVE destinations)."""
        ae_title = ae_title.strip()
        for d in self.destinations:
            if d.ae_title == ae_title:
                return d
        return None

    def with_overrides(self, **sections: Any) -> "Config":
        """Copy with whole sections replaced (used by tests and the CLI)."""
        return dataclasses.replace(self, **sections)


def _section(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from table ``raw`` with type checks and no unknown keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key '{key}' in [{where}] (known: {', '.join(sorted(known))})")
        default = known[key].default
        if default is dataclasses.MISSING:
            expected: Any = known[key].type
        else:
            expected = type(default)
        kwargs[key] = _coerce(value, expected, f"[{where}] {key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required key
        missing = [k for k, f in known.items() if f.default is dataclasses.MISSING and k not in kwargs]
        raise ConfigError(f"[{where}] is missing key(s): {', '.join(missing)}") from exc


def _coerce(value: Any, expected: Any, where: str) -> Any:
    if expected in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if expected in (int, "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if expected in (str, "str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if expected in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if expected in (tuple, "tuple[str, ...]"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(f"unhandled type {expected!r} for {where}")


def _table_array(raw: dict[str, Any], key: str, cls: type) -> list:
    """[[key]] tables, each validated into ``cls``."""
    items = raw.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"{key} must be an array of tables: [[{key}]]")
    return [_section(cls, item, f"{key} #{i + 1}") for i, item in enumerate(items)]


_SECTIONS = {
    "node": NodeSection,
    "series": SeriesSection,
    "routing": RoutingSection,
    "security": SecuritySection,
    "jobs": JobsSection,
    "send": SendSection,
    "engine": EngineSection,
    "index": IndexSection,
}


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a parsed TOML document and return the :class:`Config`."""
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("destinations", "classify"):
            continue
        if key not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{key}] (known: {', '.join(sorted([*_SECTIONS, 'destinations']))})"
            )
        sections[key] = _section(_SECTIONS[key], value, key)

    node: NodeSection = sections.get("node", NodeSection())
    check_ae_title(node.ae_title, "[node] ae_title")
    _check_port(node.port, "[node] port")
    if not node.host:
        raise ConfigError("[node] host must not be empty")
    if not 1 <= node.max_associations <= 256:
        raise ConfigError(f"[node] max_associations: {node.max_associations} is outside 1-256")
    if node.max_pdu_size != 0 and not 4096 <= node.max_pdu_size <= 2**26:
        raise ConfigError(f"[node] max_pdu_size: {node.max_pdu_size} is outside 4096-67108864 (or 0 = unlimited)")

    index: IndexSection = sections.get("index", IndexSection())
    if index.url and not index.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"[index] url must be a postgresql:// URL (or empty for SQLite), got {index.url!r}")

    if node.index_synchronous not in ("normal", "full"):
        raise ConfigError(f"[node] index_synchronous must be 'normal' or 'full', got {node.index_synchronous!r}")

    series: SeriesSection = sections.get("series", SeriesSection())
    if series.stable_seconds <= 0:
        raise ConfigError(f"[series] stable_seconds must be > 0, got {series.stable_seconds}")
    if series.stack_seconds < 0:
        raise ConfigError(f"[series] stack_seconds must be >= 0, got {series.stack_seconds}")

    destinations: list[Destination] = []
    for d in _table_array(raw, "destinations", Destination):
        check_ae_title(d.ae_title, f"[[destinations]] '{d.name}' ae_title")
        _check_port(d.port, f"[[destinations]] '{d.name}' port")
        if any(o.name == d.name for o in destinations):
            raise ConfigError(f"[[destinations]] name '{d.name}' is used twice")
        if any(o.ae_title == d.ae_title for o in destinations):
            raise ConfigError(f"[[destinations]] AE title '{d.ae_title}' is used twice (C-MOVE needs it unique)")
        destinations.append(d)

    routing: RoutingSection = sections.get("routing", RoutingSection())
    names = {d.name for d in destinations}
    for key in ("send_results_to", "forward_series_to"):
        for name in getattr(routing, key):
            if name not in names:
                raise ConfigError(f"[routing] {key} names destination '{name}', which is not configured")

    rules = []
    for i, rule in enumerate(_table_array(raw, "classify", ClassifyRule)):
        if rule.kind not in set(SeriesKind):
            raise ConfigError(f"[[classify]] #{i + 1}: kind must be {_one_of(SeriesKind)}, got {rule.kind!r}")
        if not (rule.series_description or rule.protocol_name or rule.sop_class_uid):
            raise ConfigError(f"[[classify]] #{i + 1}: give series_description, protocol_name or sop_class_uid")
        for pattern in (rule.series_description, rule.protocol_name):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"[[classify]] #{i + 1}: invalid regular expression {pattern!r}: {exc}") from exc
        rules.append(rule)

    engine: EngineSection = sections.get("engine", EngineSection())
    if engine.perfusion_method not in PERFUSION_METHODS:
        raise ConfigError(f"[engine] perfusion_method must be {_one_of(PERFUSION_METHODS)}, "
                          f"got {engine.perfusion_method!r}")
    if not 0.2 <= engine.hematocrit <= 0.7:
        raise ConfigError(f"[engine] hematocrit must be in 0.2-0.7, got {engine.hematocrit}")
    from pinn_engine.t2 import T2_METHODS  # noqa: PLC0415  (scipy: only where a configuration is checked)

    if engine.t2_method not in T2_METHODS:
        raise ConfigError(f"[engine] t2_method must be {_one_of(T2_METHODS)}, got {engine.t2_method!r}")
    if not 0.5 < engine.confidence < 1.0:
        raise ConfigError(f"[engine] confidence must be in (0.5, 1), got {engine.confidence}")
    if engine.prebolus_dose_ratio and not 1.0 < engine.prebolus_dose_ratio <= 100.0:
        raise ConfigError(f"[engine] prebolus_dose_ratio must be 0 (unknown) or in (1, 100], "
                          f"got {engine.prebolus_dose_ratio}")

    security: SecuritySection = sections.get("security", SecuritySection())
    for ae in security.allowed_calling_aes:
        check_ae_title(ae, "[security] allowed_calling_aes")
    if node.http_port:
        _check_port(node.http_port, "[node] http_port")
    if node.tls_port or any(d.tls for d in destinations):
        if node.tls_port:
            _check_port(node.tls_port, "[node] tls_port")
            if node.tls_port == node.port:
                raise ConfigError("[node] tls_port must differ from port")
        for key in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
            value = getattr(security, key)
            if not value:
                raise ConfigError(f"[security] {key} is required when TLS is used")
            if not Path(value).is_file():
                raise ConfigError(f"[security] {key}: no such file {value!r}")

    jobs: JobsSection = sections.get("jobs", JobsSection())
    if jobs.workers < 1 or jobs.max_attempts < 1:
        raise ConfigError("[jobs] workers and max_attempts must be >= 1")

    return Config(
        node=node,
        series=series,
        destinations=tuple(destinations),
        routing=routing,
        security=security,
        jobs=jobs,
        send=sections.get("send", SendSection()),
        engine=engine,
        classify=tuple(rules),
        index=index,
    )


def load_config(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Load and validate ``path``; ``None`` gives the embedded default.

    ``overrides`` (section -> key -> value, e.g. from command-line options) replace the
    file's values before validation, so they are checked like the file's own.
    """
    if path is None and not overrides:
        return Config()
    raw: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
