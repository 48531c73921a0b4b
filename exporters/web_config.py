"""The exporter's web configuration file: TLS and basic auth, in the format of Prometheus'
exporter-toolkit `web.yml`, so one file serves node_exporter and aifmon alike:

    tls_server_config:
      cert_file: /etc/aifmon/node.crt
      key_file: /etc/aifmon/node.key
      client_ca_file: /etc/aifmon/ca.crt          # optional
      client_auth_type: RequireAndVerifyClientCert  # optional: NoClientCert (default) or that
      min_version: TLS12                           # optional: TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2y$10$...                       # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Basic auth answers an unknown user as slowly as a known one (a dummy hash of the same cost) and runs at
most two bcrypt checks at once; a request beyond that is refused at once with 401, as a wrong password
is, rather than queued (telemetry/passwords.py).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import NoReturn

from aifmon.telemetry.passwords import HASH_PREFIXES, BcryptChecker, PasswordCheckBusy, bcrypt_cost
from aifmon.telemetry.safe_yaml import YAMLFileError, load_yaml_file

_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _checker: BcryptChecker = field(default_factory=BcryptChecker)

    def check(self, username: str, password: str) -> bool:
        """True if the pair matches; bcrypt (~50 ms at cost 10, by design) runs once per distinct good password.
        An unknown user costs the same as a wrong password; with every bcrypt slot busy the answer is False at once."""
        try:
            return self._checker.check(username, password, self.basic_auth_users.get(username), self._unknown_cost)
        except PasswordCheckBusy:
            return False

    @property
    def _unknown_cost(self) -> int:
        return max(map(bcrypt_cost, self.basic_auth_users.values()), default=10)


def load_web_config(path: str) -> WebConfig:
    """Parse and check a web config file; errors name the file and key and say what is expected."""
    try:
        doc = load_yaml_file(path, default={})
    except YAMLFileError as e:
        raise ValueError(f"web config {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"web config {path}: expected a mapping with tls_server_config and/or basic_auth_users")
    unknown = set(doc) - {"tls_server_config", "basic_auth_users"}
    if unknown:
        raise ValueError(f"web config {path}: unknown key(s) {', '.join(sorted(unknown))} "
                         "(supported: tls_server_config, basic_auth_users)")
    config = WebConfig()
    tls = doc.get("tls_server_config")
    if tls is not None:
        config.ssl_context = _ssl_context(path, tls)
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ValueError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(HASH_PREFIXES) or not hashed[4:6].isdigit():
            raise ValueError(f"web config {path}: basic_auth_users.{user}: expected a bcrypt hash ($2y$10$...), "
                             "never a plain password")
        config.basic_auth_users[str(user)] = hashed.encode()
    if config.basic_auth_users:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            raise ValueError(f"web config {path}: basic_auth_users needs the bcrypt package (pip install bcrypt)") from None
        config._checker.prepare(config._unknown_cost)
    return config


def _ssl_context(path: str, tls: object) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise ValueError(f"web config {path}: tls_server_config must be a mapping")
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        raise ValueError(f"web config {path}: tls_server_config: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(supported: {', '.join(sorted(_TLS_KEYS))})")
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            raise ValueError(f"web config {path}: tls_server_config.{key} is required")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS.get(tls.get("min_version", "TLS12")) or _bad(path, "min_version", _VERSIONS)
    try:
        ctx.load_cert_chain(tls["cert_file"], tls["key_file"])
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"web config {path}: cannot load cert_file/key_file: {e}") from None
    mode = _CLIENT_AUTH.get(tls.get("client_auth_type", "NoClientCert"))
    if mode is None:
        _bad(path, "client_auth_type", _CLIENT_AUTH)
    ctx.verify_mode = mode
    if mode == ssl.CERT_REQUIRED:
        if not tls.get("client_ca_file"):
            raise ValueError(f"web config {path}: client_auth_type RequireAndVerifyClientCert needs client_ca_file")
        try:
            ctx.load_verify_locations(tls["client_ca_file"])
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"web config {path}: cannot load client_ca_file: {e}") from None
    return ctx


def _bad(path: str, key: str, allowed: dict) -> NoReturn:
    raise ValueError(f"web config {path}: tls_server_config.{key} must be one of {', '.join(allowed)}")
