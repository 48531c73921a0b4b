"""Every refused input exits 2 with a message naming it (`file:line: key.path` or the option), never a traceback, and
never a secret it carried: bad inventories and alert rules (alias bomb, NUL, Python tags, ports, booleans for counts,
empty names), malformed store URLs, credentials in store and BMC URLs. Most cases run `main()` in-process; a few run the
installed command as a subprocess, as an operator types it."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from aifmon.alerts.config import NotifierConfig
from aifmon.alerts.notify import Notice, NotifierStats, build_notifiers, deliver
from aifmon.cli import main
from aifmon.stores.promql_store import VictoriaMetricsStore, basic_auth
from aifmon.stores.store import StoreError, open_store, series_key
from aifmon.telemetry.redact import redact_text, redact_url
from aifmon.telemetry.safe_yaml import MAX_ALIAS_NODES, YAMLFileError, load_yaml_file, parse_yaml
from tests.conftest import free_port, inventory_text
from tests.servers import victoria_metrics

SECRET = "s3cret-Pa55"


def _bomb(levels: int, width: int = 9) -> str:
    """A "billion laughs" document: `levels` anchors, each a list of `width` aliases to the one before."""
    lines = ['l0: &l0 [' + ", ".join(['"lol"'] * width) + ']']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _broken(old: str, new: str, text: str | None = None) -> str:
    text = inventory_text() if text is None else text
    assert old in text, old
    return text.replace(old, new, 1)


def _at(text: str, needle: str) -> str:
    """`bad.yaml:N:` for the first line holding `needle`."""
    return f"bad.yaml:{next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)}:"


_TARGET = '    energy_price_eur_per_kwh: 0.15\n    targets: ["127.0.0.1:{port}"]'
INVENTORIES = [
    # (case, file text, pieces the message must hold)
    ("alias bomb", (_B := "name: bomb\n" + _bomb(9) + "factories: *l8\n"), ["bad.yaml:1: aliases expand this document to 926,177,117"]),
    ("recursive alias", "name: x\nfactories: &f [*f]\n", ["bad.yaml:2: an alias refers to a node that contains it"]),
    ("NUL byte", (_N := _broken("name: Beta AI Factory", 'name: "Beta\x00AI"')), [_at(_N, "Beta\x00"), "U+0000 is not allowed"]),
    ("Python tag", (_P := _broken("power_cap_mw: 0.015", 'power_cap_mw: !!python/object/apply:os.system ["touch {marker}"]')),
     [_at(_P, "!!python"), "tag '!!python/object/apply:os.system' is not allowed"]),
    ("complex key", (_K := _broken("    design_pue: 1.2", "    ? [design, pue]\n    : 1.2")), [_at(_K, "? [design"), "a key must be plain text"]),
    ("target port above 65535", (_T := _broken("    energy_price_eur_per_kwh: 0.15", _TARGET.format(port=99999))),
     [_at(_T, "99999"), "factories[0].targets", "'127.0.0.1:99999' is not host:port with a port from 1 to 65535"]),
    ("target port 0", (_Z := _broken("    energy_price_eur_per_kwh: 0.15", _TARGET.format(port=0))), [_at(_Z, ":0\""), "port from 1 to 65535"]),
    ("boolean count", (_C := _broken("count: 4", "count: true")),
     [_at(_C, "count: true"), "factories[0].systems[0].node_groups[0].count: Input should be a valid integer (got True)"]),
    ("boolean cap", (_BC := _broken("power_cap_mw: 0.015", "power_cap_mw: yes")), [_at(_BC, "power_cap_mw: yes"), "factories[0].power_cap_mw", "number"]),
    ("number as text", (_S := _broken("gpus_per_node: 4", 'gpus_per_node: "4"')), [_at(_S, 'gpus_per_node: "4"'), "node_groups[0].gpus_per_node"]),
    ("empty name", (_E := _broken("name: Alpha AI Factory", 'name: ""')), [_at(_E, 'name: ""'), "factories[0].name: a name is required"]),
    ("system cap above its factory's", (_CAP := re.sub(r"power_cap_kw: \S+", "power_cap_kw: 900", inventory_text(), count=1)),
     [_at(_CAP, "power_cap_kw: 900"), "factories[0].systems[0].power_cap_kw: 900 kW is above its factory's power_cap_mw"]),
    ("blank project name", (_W := _broken("name: Alpha training", 'name: "   "')), [_at(_W, 'name: "   "'), "projects[0].name: a name is required"]),
]


@pytest.mark.parametrize("case,text,expected", INVENTORIES, ids=[c[0] for c in INVENTORIES])
def test_a_bad_inventory_exits_2_naming_file_line_and_key(case, text, expected, tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{marker}", str(marker)), encoding="utf-8")
    assert main(["--quiet", "inventory", "show", "--inventory", str(bad)]) == 2
    err = capsys.readouterr().err
    for piece in expected:
        assert piece.replace("bad.yaml", str(bad)) in err, f"{case}: {piece!r} not in:\n{err}"
    assert "Traceback" not in err and not marker.exists()


RULES = [
    ("alias bomb", "scopes:\n" + "".join("  " + line + "\n" for line in _bomb(8).splitlines()), ["bad.yaml:1: aliases expand this document"]),
    ("NUL byte", "evaluation_interval: 15s\nstale_after: \x00\n", ["bad.yaml:2: character U+0000"]),
    ("SMTP port above 65535", "notifiers:\n  - type: email\n    smtp: mail.example.org:70000\n    from: a@b\n    to: [c@d]\n",
     ["bad.yaml:3: notifiers[0].smtp: 'mail.example.org:70000' is not host:port with a port from 1 to 65535"]),
    ("boolean retries", "notifiers:\n  - type: alertmanager\n    url: http://127.0.0.1:9093\n    retries: true\n",
     ["bad.yaml:4: notifiers[0].retries: Input should be a valid integer (got True)"]),
    ("password in the file", f"notifiers:\n  - type: email\n    smtp: m:25\n    from: a@b\n    to: [c@d]\n    password: {SECRET}\n",
     ["bad.yaml:6: notifiers[0].password: secrets are not written in the rules file; use password_env/password_file"]),
]


@pytest.mark.parametrize("case,text,expected", RULES, ids=[c[0] for c in RULES])
def test_a_bad_alert_rules_file_exits_2_naming_file_line_and_key(case, text, expected, tmp_path, capsys):
    (tmp_path / "inv.yaml").write_text(inventory_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    assert main(["--quiet", "alerts", "export-rules", "--inventory", str(tmp_path / "inv.yaml"), "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    for piece in expected:
        assert piece.replace("bad.yaml", str(bad)) in err, f"{case}: {piece!r} not in:\n{err}"
    assert "Traceback" not in err and SECRET not in err


STORE_URLS = [
    # (case, --store, pieces of the message); SECRET must never show
    ("port above 65535", "victoriametrics+http://127.0.0.1:99999", ["store URL 'victoriametrics+http://127.0.0.1:99999'", "Port out of range"]),
    ("port not a number", "prometheus+http://127.0.0.1:abc", ["store URL 'prometheus+http://127.0.0.1:abc'", "a port is a number from 1 to 65535"]),
    ("port 0", "prometheus+http://127.0.0.1:0", ["port 0"]),
    ("credentials in a PromQL URL", f"victoriametrics+http://bob:{SECRET}@127.0.0.1:8428",
     ["store URL 'victoriametrics+http://***@127.0.0.1:8428': credentials never go in the URL", "AIFMON_STORE_USERNAME", "AIFMON_STORE_PASSWORD_FILE"]),
    ("token in an InfluxDB URL", f"influxdb+http://127.0.0.1:8086?org=o&bucket=b&token={SECRET}",
     ["store URL 'influxdb+http://127.0.0.1:8086?org=o&bucket=b&token=***'"]),
    ("credentials in an unknown scheme", f"sqlite://bob:{SECRET}@db/x.db", ["store URL 'sqlite://***@db/x.db' is not understood"]),
]


@pytest.mark.parametrize("case,url,expected", STORE_URLS, ids=[c[0] for c in STORE_URLS])
def test_a_bad_store_url_exits_2_with_a_message_and_no_secret(case, url, expected, capsys):
    assert main(["--quiet", "rollup", "energy", "--start", "now-1h", "--store", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and SECRET not in err, err
    for piece in expected:
        assert piece in err, f"{case}: {piece!r} not in:\n{err}"


def _aifmon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aifmon", "--quiet", *args], capture_output=True, text=True, timeout=120)


def test_the_installed_command_refuses_an_alias_bomb_without_growing(tmp_path):
    """Before the bounded loader this file took 23 s and 3.1 GB before a MemoryError; now it is refused before anything
    is built. Memory is the figure asserted (the child's peak RSS), not time: a 1 GB bound is 30 times what it takes."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_B)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large pytest process
    # would report pytest's peak (1.2 GB late in the suite); VmHWM belongs to the new address space.
    probe = ("import re, sys; from aifmon.cli import main; rc = main(sys.argv[1:]); "
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", probe, "--quiet", "inventory", "show", "--inventory", str(bomb)],
                         capture_output=True, text=True, timeout=120)
    *message, peak_kib = out.stderr.splitlines()
    assert out.returncode == 2 and f"{bomb}:1: aliases expand this document to 926,177,117 nodes" in "\n".join(message)
    assert int(peak_kib) < 1024 * 1024, f"peak RSS {int(peak_kib) / 1024:.0f} MiB"


def test_the_installed_command_refuses_credentials_in_a_bmc_url_and_says_where_they_go():
    out = _aifmon("exporter", "node", "--no-gpu", "--listen", f"127.0.0.1:{free_port()}", "--bmc-url", f"https://root:{SECRET}@127.0.0.1")
    assert out.returncode == 2 and "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout
    assert "BMC URL 'https://***@127.0.0.1': credentials never go in the URL" in out.stderr
    assert "--bmc-credentials-file" in out.stderr and "AIFMON_BMC_USERNAME" in out.stderr


def test_the_installed_command_refuses_a_token_in_an_influxdb_url_without_echoing_it(tmp_path):
    (tmp_path / "x.om").write_text("# EOF\n")
    out = _aifmon("store", "import", str(tmp_path / "x.om"), "--store", f"influxdb+http://127.0.0.1:8086?org=o&bucket=b&token={SECRET}")
    assert out.returncode == 2 and "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout
    assert "a token never goes in the URL; set AIFMON_INFLUXDB_TOKEN" in out.stderr


def test_a_promql_store_behind_basic_auth_takes_its_credentials_from_the_environment(tmp_path, monkeypatch):
    for env in ("AIFMON_STORE_USERNAME", "AIFMON_STORE_PASSWORD", "AIFMON_STORE_PASSWORD_FILE"):
        monkeypatch.delenv(env, raising=False)
    with victoria_metrics(tmp_path, extra_args=("-httpAuth.username=aifmon", f"-httpAuth.password={SECRET}")) as vm:
        url = "victoriametrics+http" + vm.url.removeprefix("http")
        with open_store(url, needs=VictoriaMetricsStore) as store, pytest.raises(StoreError) as refused:
            store.metric_names()
        assert "HTTP 401 set AIFMON_STORE_USERNAME and AIFMON_STORE_PASSWORD_FILE" in str(refused.value)

        password_file = tmp_path / "store-password"
        password_file.write_text(SECRET + "\n")
        monkeypatch.setenv("AIFMON_STORE_USERNAME", "aifmon")
        monkeypatch.setenv("AIFMON_STORE_PASSWORD_FILE", str(password_file))
        t_ms = int(time.time() * 1000)
        with open_store(url, needs=VictoriaMetricsStore) as store:
            ids = store.series_ids([series_key("aif_probe_watts", {"node": "n1"})])
            store.append(ids, np.array([t_ms]), np.array([42.5]))
            flush = urllib.request.Request(vm.url + "/internal/force_flush", headers={"Authorization": basic_auth() or ""})
            urllib.request.urlopen(flush, timeout=30).read()  # vm.force_flush() without auth is refused here
            latest = store.latest("aif_probe_watts", at_ms=t_ms + 1000)
        assert latest[["node", "t_ms", "value"]].values.tolist() == [["n1", t_ms, 42.5]]


class _EchoingHook:
    """A webhook server that refuses every POST with 404 and quotes the request path, as chat services do."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"error": f"no hook at {self.path}"}).encode()
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_webhooks_secret_path_never_reaches_errors_or_logs(caplog):
    hook = _EchoingHook()
    secret_path = f"/services/T000/B000/{SECRET}"
    closed = free_port()
    configs = [NotifierConfig(type="webhook", name="chat", url=f"http://127.0.0.1:{hook.port}{secret_path}", retries=0),
               NotifierConfig(type="webhook", name="down", url=f"http://127.0.0.1:{closed}{secret_path}", retries=0)]
    notice = Notice({"alertname": "PowerCapBreached", "factory": "alpha"}, {}, "firing", 1_790_000_000_000, None)
    try:
        with caplog.at_level(logging.WARNING, logger="aifmon.alerts.notify"):
            errors = []
            for notifier in build_notifiers(configs, 3600.0, 15.0):
                stats = NotifierStats()
                assert not deliver(notifier, {"alertname": "PowerCapBreached"}, [notice], notice.starts_ms, stats, backoff_s=0)
                errors.append(stats.last_error)
    finally:
        hook.server.shutdown()
    assert errors[0] == f'NotifierError: http://127.0.0.1:{hook.port}/… answered HTTP 404: {{"error": "no hook at ***"}}'
    assert errors[1].startswith(f"NotifierError: http://127.0.0.1:{closed}/…: URLError: ")
    assert len(caplog.records) == 2 and SECRET not in caplog.text + "".join(errors) and "T000" not in caplog.text


def test_redact_text_masks_a_password_quoted_without_its_url():
    url = f"http://bob:{SECRET}@vm:8428"
    assert redact_text(f"login bob:{SECRET} refused; tried {SECRET} twice", url) == "login *** refused; tried *** twice"


@pytest.mark.parametrize("url,keep_path,shown", [
    (f"victoriametrics+http://bob:{SECRET}@vm:8428/select/0/prometheus", True, "victoriametrics+http://***@vm:8428/select/0/prometheus"),
    (f"http://bob:{SECRET}@vm:8428/x", True, "http://***@vm:8428/x"),
    (f"influxdb+https://db:8086?org=o&bucket=b&token={SECRET}&spool=/s", True, "influxdb+https://db:8086?org=o&bucket=b&token=***&spool=/s"),
    (f"https://hooks.slack.com/services/T000/B000/{SECRET}", False, "https://hooks.slack.com/…"),
    (f"https://api.example.org/hook?api_key={SECRET}", True, "https://api.example.org/hook?api_key=***"),
    ("http://127.0.0.1:9093", False, "http://127.0.0.1:9093"),
    ("duckdb:///data/aifmon.duckdb", True, "duckdb:///data/aifmon.duckdb"),
])
def test_redact_url_hides_credentials_tokens_and_secret_paths(url, keep_path, shown):
    assert redact_url(url, keep_path) == shown
    assert redact_text(f"POST {url} failed", url, keep_path) == f"POST {shown} failed"


def test_anchors_aliases_and_merge_keys_within_the_bound_load_as_written():
    data, lines = parse_yaml("base: &b {cap: 5, pue: 1.2}\nsite:\n  <<: *b\n  cap: 7\nlist: [*b, *b]\n", "ok.yaml")
    assert data == {"base": {"cap": 5, "pue": 1.2}, "site": {"cap": 7, "pue": 1.2}, "list": [{"cap": 5, "pue": 1.2}] * 2}
    assert lines[("site", "cap")] == 4
    under = _bomb(5, width=9)  # 9^5 = 59,049 strings through aliases: under the bound, so read
    assert len(parse_yaml(under, "ok.yaml")[0]["l4"]) == 9
    with pytest.raises(YAMLFileError, match=f"at most {MAX_ALIAS_NODES:,} are read"):
        parse_yaml(_bomb(6, width=9), "big.yaml")  # 9^6: over it


def test_the_file_loader_names_the_file_for_the_node_agents_small_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml_file(str(tmp_path / "empty.yaml"), default={}) == {}
    with pytest.raises(YAMLFileError, match=r"nope\.yaml: cannot read: No such file"):
        load_yaml_file(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("users:\n  alice: !!binary aGk=\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:2: tag '!!binary' is not allowed"):
        load_yaml_file(str(tmp_path / "bad.yaml"))

