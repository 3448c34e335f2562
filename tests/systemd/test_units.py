"""The shipped units under a real systemd (PID 1 of a booted Debian 12 container, tests/systemd/conftest.py): install
from the wheel, ready/notify, restart on kill -9, the watchdog, the sandbox's writable paths, serving online and
offline from the cache, journal priorities, 50 kubelet-style rotations, an unwritable cache reported, re-install
restarts, stop, uninstall leaving nothing enabled. The tests run in file order against one boot."""

from __future__ import annotations

import datetime
import json
import re

import pytest
from cryptography import x509

from tests.systemd.conftest import SIM, SIM_UNIT, Machine, until

pytestmark = [pytest.mark.timeout(900), pytest.mark.systemd]
PODS = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1"
DROPIN = "/run/systemd/system/edgeproxy.service.d/test.conf"


def main_pid(m: Machine) -> int:
    return int(m.show("edgeproxy", "MainPID")["MainPID"])


def restarted(m: Machine, old: int) -> int:
    """Wait for edgeproxy.service to run again under a new main process (and be ready: Type=notify)."""
    def new_and_active():
        s = m.show("edgeproxy", "MainPID", "ActiveState", "SubState")
        return int(s["MainPID"]) not in (0, old) and s["ActiveState"] == "active" and s["SubState"] == "running" \
            and int(s["MainPID"])
    return until(new_and_active, "edgeproxy.service to be restarted and ready", 60)


def test_install_from_the_wheel_starts_and_notifies_ready(machine: Machine):
    # A faster watchdog for this test run (an operator's drop-in place), so a wedged process is caught in seconds.
    machine.run("sh", "-c", f"mkdir -p {DROPIN.rsplit('/', 1)[0]} && "
                f"printf '[Service]\\nWatchdogSec=2s\\nTimeoutAbortSec=2s\\n' > {DROPIN}")
    out = machine.run("/opt/edgeproxy/bin/edgeproxy", "install-systemd", "--prefix", "/opt/edgeproxy",
                      "--server", SIM, "--now").stdout
    assert "systemctl enable --now edgeproxy-credentials.service edgeproxy.service" in out
    s = machine.show("edgeproxy", "ActiveState", "SubState", "Type", "StatusText", "WatchdogUSec", "User")
    # Type=notify: "active" only after READY=1; the status line comes from the proxy (STATUS=)
    assert (s["ActiveState"], s["SubState"], s["Type"]) == ("active", "running", "notify"), s
    assert s["WatchdogUSec"] == "2s" and s["User"] == "edgeproxy"
    until(lambda: machine.show("edgeproxy", "StatusText")["StatusText"].startswith("online; serving on"),
          "the status line to say online")
    creds = machine.show("edgeproxy-credentials", "ActiveState", "Type")
    assert creds == {"ActiveState": "active", "Type": "notify"}, creds
    for unit in ("edgeproxy.service", "edgeproxy-credentials.service"):
        assert machine.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
    assert machine.path("/var/lib/edgeproxy/pki/client.pem").read_bytes() == \
        machine.path("/var/lib/kubelet/pki/kubelet-client-current.pem").read_bytes()


def test_serves_online_then_offline_from_the_cache_with_journal_priorities(machine: Machine):
    online = machine.kubelet_get(PODS)
    assert online["status"] == 200 and len(online["items"]) == 15, online
    assert online["headers"].get("X-Edgeproxy-Source") != "cache"
    machine.run("systemctl", "stop", SIM_UNIT)

    def from_cache():
        answer = machine.kubelet_get(PODS)
        return answer if answer["status"] == 200 and answer["headers"].get("X-Edgeproxy-Source") == "cache" else None
    offline = until(from_cache, "the list answered from the cache", 60, 0.2)
    assert offline["items"] == online["items"]
    until(lambda: machine.readyz()["headers"]["X-Edgeproxy-Online"] == "false", "/readyz to say offline")
    # Journal priorities: warnings and errors at their level, info below `-p warning`.
    warnings = [json.loads(line) for line in machine.journal("-u", "edgeproxy", "-p", "warning", "-o", "json")
                .splitlines()]
    events = {json.loads(w["MESSAGE"]).get("event"): int(w["PRIORITY"]) for w in warnings}
    assert events.get("server_down") == 4 and events.get("offline") == 4, events
    assert "SSLContext" not in machine.journal("-u", "edgeproxy", "-o", "cat")
    assert "edgeproxy serving on" not in "".join(w["MESSAGE"] for w in warnings)
    assert "edgeproxy serving on" in machine.journal("-u", "edgeproxy", "-p", "info", "-o", "cat")
    machine.run("systemctl", "start", SIM_UNIT)  # online again a few probes later (the rotations test waits for it)


def test_the_sandbox_writes_only_under_var_lib_edgeproxy(machine: Machine):
    pid = main_pid(machine)
    probe = ("for p in /etc /opt/edgeproxy /usr /var/cache /var/lib /var/lib/edgeproxy /var/lib/edgeproxy/cache; do "
             "if touch $p/.sandbox-probe 2>/dev/null; then rm -f $p/.sandbox-probe; echo \"$p rw\"; "
             "else echo \"$p ro\"; fi; done")
    # as root, inside the service's own mount namespace (nsenter of the container, which knows the pid)
    out = machine.run("nsenter", "-t", str(pid), "-m", "--", "sh", "-c", probe).stdout
    modes = dict(line.split() for line in out.splitlines())
    assert modes == {"/etc": "ro", "/opt/edgeproxy": "ro", "/usr": "ro", "/var/cache": "ro", "/var/lib": "ro",
                     "/var/lib/edgeproxy": "rw", "/var/lib/edgeproxy/cache": "rw"}, out
    # outside the sandbox, root writes /etc: the read-only view is the unit's
    assert machine.run("sh", "-c", "touch /etc/.host-probe && rm /etc/.host-probe").returncode == 0


def test_kill_9_restarts_and_the_watchdog_catches_a_wedged_process(machine: Machine):
    pid = main_pid(machine)
    machine.run("kill", "-9", str(pid))
    pid = restarted(machine, pid)
    machine.run("kill", "-STOP", str(pid))  # alive but answering nothing: only the watchdog can tell
    restarted(machine, pid)
    assert "Watchdog timeout" in machine.journal("-u", "edgeproxy", "-o", "cat")
    assert machine.kubelet_get(PODS)["status"] == 200


def test_fifty_kubelet_rotations_all_reach_the_proxy(machine: Machine):
    copy = machine.path("/var/lib/edgeproxy/pki/client.pem")
    for i in range(50):
        pem = machine.rotate(days=31 + i)
        until(lambda pem=pem: copy.read_bytes() == pem, f"rotation {i + 1} to be copied for the proxy", 15, 0.02)
    # the proxy re-reads the copy (EDGEPROXY_CERT_RELOAD_INTERVAL) and goes upstream with the newest certificate
    expiry = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()

    seen: list[str] = []

    def reloaded():
        metrics = machine.request("http://127.0.0.1:10267/metrics")["text"]
        seen[:] = [line for line in metrics.splitlines() if "certificate" in line and not line.startswith("#")]
        pattern = r'edgeproxy_certificate_expiry_timestamp_seconds\{file="/var/lib/edgeproxy/pki/client.pem"\} (\S+)'
        found = re.search(pattern, metrics)
        return found and float(found.group(1)) == expiry
    try:
        until(reloaded, "the proxy to load the last certificate", 60, 0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; expected {expiry}; metrics: {seen}") from None
    until(lambda: machine.readyz()["headers"]["X-Edgeproxy-Online"] == "true", "the proxy to be online", 60, 0.2)
    answer = machine.kubelet_get(PODS)  # forwarded, so upstream accepted the newest certificate
    assert answer["status"] == 200 and answer["headers"].get("X-Edgeproxy-Source") != "cache", answer
    assert datetime.datetime.fromtimestamp(expiry, datetime.UTC) > datetime.datetime.now(datetime.UTC)


def test_an_unwritable_cache_is_reported(machine: Machine):
    env = machine.path("/etc/default/edgeproxy")
    original = env.read_text()
    env.write_text(original.replace("EDGEPROXY_CACHE_DIR=/var/lib/edgeproxy/cache",
                                    "EDGEPROXY_CACHE_DIR=/var/cache/edgeproxy"))
    try:
        pid = main_pid(machine)
        machine.run("systemctl", "restart", "edgeproxy")
        restarted(machine, pid)
        ready = machine.readyz()
        assert ready["headers"]["X-Edgeproxy-Cache"] == "off" and "[-]cache off" in ready["text"], ready
        assert "ReadWritePaths" in ready["text"]
        assert "NO CACHE" in machine.show("edgeproxy", "StatusText")["StatusText"]
        check = machine.run("/opt/edgeproxy/bin/edgeproxy", "debug", "check", check=False)
        assert check.returncode == 1, check.stdout
        assert "outside the unit's ReadWritePaths= (/var/lib/edgeproxy)" in check.stdout, check.stdout
        assert "tmpfiles" not in check.stdout.split("ReadWritePaths", 1)[1].split("\n\n")[0]
        assert "cannot be opened" in machine.journal("-u", "edgeproxy", "-p", "err", "-o", "cat")
    finally:
        env.write_text(original)
    pid = main_pid(machine)
    machine.run("systemctl", "restart", "edgeproxy")
    restarted(machine, pid)
    assert machine.readyz()["headers"]["X-Edgeproxy-Cache"] == "on"


def test_install_again_restarts_the_running_service_and_says_so(machine: Machine):
    pid = main_pid(machine)
    out = machine.run("/opt/edgeproxy/bin/edgeproxy", "install-systemd", "--prefix", "/opt/edgeproxy",
                      "--server", SIM, "--now").stdout
    assert "were running: restarted" in out or "was running: restarted" in out, out
    restarted(machine, pid)


def test_stop_is_clean_and_uninstall_leaves_nothing_enabled(machine: Machine):
    machine.run("systemctl", "stop", "edgeproxy")
    s = machine.show("edgeproxy", "ActiveState", "Result")
    assert s == {"ActiveState": "inactive", "Result": "success"}, (
        s, machine.journal("-u", "edgeproxy", "-o", "short-monotonic", "-n", "60"))
    out = machine.run("/opt/edgeproxy/bin/edgeproxy", "uninstall-systemd").stdout
    assert "/var/lib/edgeproxy" in out and "userdel edgeproxy" in out, out
    files = machine.run("systemctl", "list-unit-files", "edgeproxy*", "--no-legend", check=False)
    assert files.stdout.strip() == "", files.stdout  # (exit 1: no unit file matches)
    units = machine.run("systemctl", "list-units", "--all", "edgeproxy*", "--no-legend", check=False)
    assert units.stdout.strip() == "", units.stdout
    for unit in ("edgeproxy.service", "edgeproxy-credentials.service"):
        assert machine.run("systemctl", "is-enabled", unit, check=False).stdout.strip() in ("", "not-found")
    links = machine.run("sh", "-c", "ls /etc/systemd/system/*.wants/ | grep edgeproxy || true").stdout
    assert links.strip() == "", links
    assert not machine.path("/etc/systemd/system/kubelet.service.d/20-edgeproxy.conf").exists()
