"""What ADD, DEL, CHECK, GC and STATUS do: the snapshot model of DESIGN.md §6 over records, journal and delegate.

Online (the delegate answers) the delegate decides every IP and the records follow it; a restarted pod asks the
delegate for the IP it had. Offline (delegate.py says so) ADD serves an ACTIVE or HELD record of the same pod and
nothing else: a new pod gets code 11, a RELEASED record is never served (the IP may be someone else's by now). DEL is
idempotent; a release the outage prevents is journaled and replayed once the delegate answers again.
The one invariant: a record is ACTIVE/HELD only while the delegate's lease under its `owner` is believed held. So a
record is marked RELEASED *before* its lease is released (and put back, as HELD after a DEL, if the delegate turns
out offline), and the release is journaled first, so a crash at any point leaves a record that is either safe to
serve or not served. A new container of a pod (restart, reboot) releases the old container's lease and asks for the
same IP under its own id; offline it inherits the record and the lease stays under the old id (`owner`).
The per-pod key lock is held across the delegate exec (the runtime already serialises one container's operations);
the network lock only around read-modify-write, so one slow delegate call never blocks other pods.
Neighbours: main.py (calls `run`), config.py, records.py, journal.py, delegate.py, result.py.
"""

from __future__ import annotations

import time

from cni_plugin import config, delegate, errors, journal, log, records, request, result

TYPE_CHECKING = False  # typing costs start-up; annotations are strings (PEP 563), so this is enough for checkers
if TYPE_CHECKING:
    from collections.abc import Mapping
REPLAY_LIMIT = 16  # journal entries replayed per invocation: bounds the latency an ADD pays for an old outage
PRUNE_EVERY = 600.0  # seconds between sweeps of old RELEASED records outside GC


class Invocation:
    """One CNI call: its config, request, store, journal and environment; the delegate is found when first needed."""

    __slots__ = ("_delegate", "cfg", "env", "journal", "req", "store")

    def __init__(self, cfg: config.Config, req: request.Request, store: records.Store, journal: journal.Journal,
                 env: Mapping[str, str]):
        self.cfg, self.req, self.store, self.journal, self.env = cfg, req, store, journal, env
        self._delegate: delegate.Delegate | None = None

    @property
    def delegate(self) -> delegate.Delegate:
        if self._delegate is None:
            self._delegate = delegate.Delegate(self.cfg, self.req.path, self.env,
                                               cache=self.store.path("delegate-version.json"))
        return self._delegate

    @property
    def key(self) -> str:
        return record_key(self.cfg, self.req)


def record_key(cfg: config.Config, req: request.Request) -> str:
    """ns/name/ifname when the runtime passes the K8S_POD_* args (key "pod"), else containerid/ifname."""
    if cfg.key == "pod" and req.pod:
        ns, name = req.pod
        return f"{ns}/{name}/{req.ifname}"
    return f"{req.container_id}/{req.ifname}"


def run(cfg: config.Config, req: request.Request, store: records.Store, env: Mapping[str, str]) -> dict | None:
    """Execute req.command; returns the result to print (ADD) or None."""
    inv = Invocation(cfg, req, store, journal.Journal(store), env)
    if req.command in ("GC", "STATUS") and result.parse_version(cfg.cni_version) < (1, 1, 0):
        raise errors.IncompatibleVersion(f"{req.command} needs cniVersion 1.1.0, config is {cfg.cni_version}")
    if req.command == "CHECK" and result.parse_version(cfg.cni_version) < (0, 4, 0):
        raise errors.IncompatibleVersion(f"CHECK needs cniVersion 0.4.0 or later, config is {cfg.cni_version}")
    return {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc, "STATUS": status}[req.command](inv)


# ---- ADD ----

def add(inv: Invocation) -> dict:
    cfg, req, store, key = inv.cfg, inv.req, inv.store, inv.key
    with store.key_lock(key):
        with store.lock():
            rec = store.get(key)
            backlog = inv.journal.any_pending()
        if rec and rec.owner == req.container_id and rec.servable(time.time(), cfg.held_max_age):
            # The delegate's lease is already under this container id (a retried ADD): nothing to ask for.
            return result.encode(_activate(inv, rec).result, cfg.cni_version)
        if rec and rec.state in (records.ACTIVE, records.HELD):
            # A new container of the same pod (restart, reboot). Its lease is under the old id: free it, then ask
            # for the same IP under the new id. If the delegate is offline, the old lease keeps backing the IP.
            reply = _release(inv, key, rec.owner, rec.ifname, config.delegate_conf(cfg, cfg.cni_version),
                             req.cni_args, deleting=False)
            if reply.offline:
                return _serve_offline(inv, reply)
            if not reply.ok:
                raise reply.error(cfg.delegate_type)
        if backlog:
            # Leases the last outage kept may be what the pool is short of: free them first. If the delegate is
            # still offline that is the answer for this ADD too, without waiting for it a second time.
            outage = _replay(inv)
            if outage is not None:
                return _serve_offline(inv, outage)
        requested = []
        if rec and cfg.request_ip != "none" and not config.runtime_requested(cfg, dict(req.args)):
            requested = result.addresses(rec.result)
        reply = _delegate_add(inv, requested)
        if not reply.ok and requested and not reply.offline:
            # Refused (the IP went to someone else while the pod was away): take whatever the delegate gives.
            log.warning("delegate refused %s for %s (%s); asking for any address", requested, key, reply.msg)
            reply = _delegate_add(inv, [])
        if reply.offline:
            return _serve_offline(inv, reply)
        if not reply.ok:
            raise reply.error(cfg.delegate_type)
        internal = result.normalize(reply.result or {})
        if not internal["ips"]:
            raise errors.DelegateGarbled(f"delegate {cfg.delegate_type} returned no IPs")
        now = time.time()
        new = records.Record(key, records.ACTIVE, req.container_id, req.container_id, req.ifname, internal,
                             rec.created if rec else now, now, now)
        try:
            with store.lock():
                store.put(new)
                _retire_conflicts(inv, new)
        except errors.StoreFailure:
            # A lease we cannot remember would be served to nobody and released by nobody: give it back.
            inv.delegate.call("DEL", config.delegate_conf(cfg, cfg.cni_version), container_id=req.container_id,
                              ifname=req.ifname, cni_args=req.cni_args)
            raise
    return result.encode(internal, cfg.cni_version)


def _delegate_add(inv: Invocation, requested: list[str]) -> delegate.Reply:
    cfg, req = inv.cfg, inv.req
    cni_args = req.cni_args
    if requested and cfg.request_ip == "env":
        cni_args = ";".join(p for p in (cni_args, f"IP={','.join(requested)}") if p)
    return inv.delegate.call("ADD", config.delegate_conf(cfg, cfg.cni_version, requested),
                             container_id=req.container_id, ifname=req.ifname, netns=req.netns, cni_args=cni_args)


def _activate(inv: Invocation, rec: records.Record) -> records.Record:
    """Make `rec` this container's, ACTIVE, its lease no longer pending release (it is in use again)."""
    if rec.state == records.ACTIVE and rec.container == inv.req.container_id:
        return rec
    with inv.store.lock():
        cur = inv.store.get(rec.key) or rec
        new = cur.replace(state=records.ACTIVE, container=inv.req.container_id)
        inv.store.put(new)
        inv.journal.drop(cur.owner, cur.ifname)
    return new


def _serve_offline(inv: Invocation, reply: delegate.Reply) -> dict:
    cfg, key = inv.cfg, inv.key
    with inv.store.lock():
        rec = inv.store.get(key)
    if rec is None or not rec.servable(time.time(), cfg.held_max_age):
        if not reply.timed_out:
            # The delegate answered "unreachable": it took no lease for this container. (After a timeout it may
            # have, server-side, so the runtime's DEL must still be passed on.)
            inv.journal.note_no_lease(inv.req.container_id, inv.req.ifname)
        why = "no snapshot" if rec is None else f"snapshot is {rec.state}"
        raise errors.TryAgainLater(f"delegate {cfg.delegate_type} is offline and {key} has {why}",
                                   f"{reply.msg} {reply.details}".strip())
    rec = _activate(inv, rec)
    log.warning("delegate %s offline (%s): served %s to %s from the snapshot (lease owner %s)",
                cfg.delegate_type, reply.msg, result.addresses(rec.result), key, rec.owner)
    return result.encode(rec.result, cfg.cni_version)


def _retire_conflicts(inv: Invocation, new: records.Record) -> None:
    """The delegate just handed out these IPs, so any other record claiming them is stale: never serve it."""
    mine = set(result.addresses(new.result))
    for other in inv.store.all():
        if other.key != new.key and other.state != records.RELEASED and mine & set(result.addresses(other.result)):
            log.warning("record %s claimed %s, which the delegate gave to %s: marked RELEASED",
                        other.key, sorted(mine), new.key)
            inv.store.put(other.replace(state=records.RELEASED))


# ---- releases and the journal ----

def _release(inv: Invocation, key: str, owner: str, ifname: str, conf: dict, cni_args: str, *,
             deleting: bool = True) -> delegate.Reply:
    """Release the delegate lease of (owner, ifname), which backs record `key` ("" for none); caller holds its key lock.

    Journal first and mark the record RELEASED, then ask; on success drop the entry. If the delegate is offline the
    lease is still held, so the record is put back as it was (HELD if this release is the pod's deletion) and the
    entry kept for replay.
    """
    store, jr = inv.store, inv.journal
    with store.lock():
        rec = store.get(key) if key else None
        prior = rec.state if rec is not None and rec.owner == owner else None
        before = rec
        old = jr.get(owner, ifname)
        entry = journal.Release(owner, ifname, key if prior else "", cni_args, conf,
                                old.created if old else time.time(), old.attempts if old else 0)
        if prior in (records.ACTIVE, records.HELD):
            jr.add(entry)
            store.put(rec.replace(state=records.RELEASED))
        else:
            try:
                jr.add(entry)
            except errors.StoreFailure as e:
                # No record depends on this lease, so nothing unsafe can be served if the note is missing:
                # release anyway (a read-only store must not block the DEL of a container we never recorded).
                log.warning("releasing %s/%s without a journal entry: %s", owner, ifname, e.msg)
    reply = inv.delegate.call("DEL", conf, container_id=owner, ifname=ifname, cni_args=cni_args)
    with store.lock():
        if reply.ok:
            jr.drop(owner, ifname)
        else:
            if reply.offline and prior in (records.ACTIVE, records.HELD):
                cur = store.get(key)
                if cur is not None and cur.owner == owner and cur.state == records.RELEASED:
                    back = records.HELD if deleting else prior
                    since = before.since if back == prior else time.time()
                    store.put(cur.replace(state=back, since=since))
            entry = jr.get(owner, ifname)
            if entry is not None:
                jr.add(journal.Release(entry.owner, entry.ifname, entry.key, entry.cni_args, entry.conf,
                                       entry.created, entry.attempts + 1, f"{reply.msg} {reply.details}".strip()))
    return reply


def _prune(inv: Invocation, now: float) -> None:
    """Forget RELEASED records older than retainAfterRelease (pod names of Deployments never come back)."""
    with inv.store.lock():
        for rec in inv.store.all():
            if (rec.state == records.RELEASED and now - rec.since > inv.cfg.retain_after_release
                    and inv.journal.get(rec.owner, rec.ifname) is None):
                inv.store.delete(rec.key)
        inv.journal.prune_no_lease(now)
        inv.store.mark_pruned()


def _replay(inv: Invocation, limit: int = REPLAY_LIMIT) -> delegate.Reply | None:
    """Release journaled leases while the delegate answers; returns the offline reply that stopped it, if any.

    Also prunes old records now and then (GC does it too, but only CNI 1.1.0 runtimes send GC, and few main
    plugins pass it on).
    """
    now = time.time()
    if inv.store.pruned_before(now - PRUNE_EVERY):
        try:
            _prune(inv, now)
        except errors.StoreFailure as e:
            log.warning("cannot prune old records: %s", e.msg)
    try:
        pending = inv.journal.pending()
    except errors.StoreFailure as e:
        log.warning("journal not readable: %s", e.msg)
        return None
    for entry in pending[:limit]:
        if entry.key == inv.key and inv.req.command in ("ADD", "DEL"):
            continue  # ours: this very operation settles it
        if entry.conf.get("ipam", {}).get("type") != inv.cfg.delegate_type:
            continue
        lock_key = entry.key or f"~release/{entry.owner}/{entry.ifname}"
        with inv.store.key_lock(lock_key, blocking=False) as got:
            if not got:
                continue  # that pod is being worked on right now; its own operation settles the lease
            with inv.store.lock():
                rec = inv.store.get(entry.key) if entry.key else None
                if rec is not None and rec.owner == entry.owner and rec.state == records.ACTIVE:
                    inv.journal.drop(entry.owner, entry.ifname)  # the lease backs a running pod again
                    continue
                if inv.journal.get(entry.owner, entry.ifname) is None:
                    continue
            reply = _release(inv, entry.key, entry.owner, entry.ifname, entry.conf, entry.cni_args)
        if reply.offline:
            return reply
        if reply.ok:
            log.info("replayed the release of %s/%s (%s)", entry.owner, entry.ifname, entry.key or "no record")
    return None


# ---- DEL ----

def delete(inv: Invocation) -> None:
    cfg, req, store, key = inv.cfg, inv.req, inv.store, inv.key
    conf = config.delegate_conf(cfg, cfg.cni_version)
    with store.key_lock(key):
        with store.lock():
            rec = store.get(key)
            pending = rec is not None and inv.journal.get(rec.owner, rec.ifname) is not None
        if rec is None or rec.container != req.container_id:
            if rec is not None and rec.owner == req.container_id and rec.state != records.RELEASED:
                # The DEL of an old container whose lease now backs the pod's new one (offline restart, reboot).
                log.info("DEL of %s for %s: its lease serves container %s, kept", req.container_id, key,
                         rec.container)
                return None
            if inv.journal.holds_no_lease(req.container_id, req.ifname):
                return None  # a sandbox whose ADD we refused while offline: the delegate holds nothing for it
            reply = _release(inv, "", req.container_id, req.ifname, conf, req.cni_args)
        elif rec.state == records.RELEASED and not pending:
            return None  # repeated DEL
        else:
            reply = _release(inv, key, rec.owner, rec.ifname, conf, req.cni_args)
    if reply.offline:
        log.warning("delegate %s offline (%s): release of %s journaled", cfg.delegate_type, reply.msg, key)
        return None
    if not reply.ok:
        raise reply.error(cfg.delegate_type)
    _replay(inv)
    return None


# ---- CHECK ----

def check(inv: Invocation) -> None:
    cfg, req = inv.cfg, inv.req
    with inv.store.lock():
        rec = inv.store.get(inv.key)
    if rec is None or rec.container != req.container_id or rec.state != records.ACTIVE:
        raise errors.UnknownContainer(f"no active address record for container {req.container_id} ({inv.key})")
    prev = cfg.net.get("prevResult")
    if prev is None:
        raise errors.InvalidConfig("CHECK needs prevResult")
    have = {ip["address"] for ip in result.normalize(prev)["ips"]}
    mine = {ip["address"] for ip in rec.result["ips"]}
    if not mine <= have:
        raise errors.AddressMismatch(f"prevResult has {sorted(have)}, the record {sorted(mine)}")
    reply = inv.delegate.call("CHECK", config.delegate_conf(cfg, cfg.cni_version), container_id=rec.owner,
                              ifname=rec.ifname, netns=req.netns, cni_args=req.cni_args)
    if not reply.ok and not reply.offline:
        raise reply.error(cfg.delegate_type)


# ---- GC and STATUS (CNI 1.1.0) ----

def _valid_attachments(cfg: config.Config) -> set[tuple[str, str]]:
    raw = cfg.net.get("cni.dev/valid-attachments", [])
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise errors.InvalidConfig("cni.dev/valid-attachments must be a list of objects")
    return {(str(a.get("containerID", "")), str(a.get("ifname", ""))) for a in raw}


def gc(inv: Invocation) -> None:
    """Release what no valid attachment uses, prune old RELEASED records, replay, and pass GC on if understood."""
    cfg, store = inv.cfg, inv.store
    valid = _valid_attachments(cfg)
    conf = config.delegate_conf(cfg, cfg.cni_version)
    now = time.time()
    for rec in store.all():
        with store.key_lock(rec.key):
            with store.lock():
                cur = store.get(rec.key)
            if cur is not None and cur.state == records.ACTIVE and (cur.container, cur.ifname) not in valid:
                log.info("GC: %s (container %s) is not a valid attachment; releasing", cur.key, cur.container)
                reply = _release(inv, cur.key, cur.owner, cur.ifname, conf, "")
                if not reply.ok and not reply.offline:
                    raise reply.error(cfg.delegate_type)
    _prune(inv, now)
    _replay(inv)
    if "1.1.0" in inv.delegate.supported():
        # Leases held under an old container id back live pods: tell the delegate they are valid too.
        keep = valid | {(r.owner, r.ifname) for r in store.all() if r.state != records.RELEASED}
        attachments = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
        reply = inv.delegate.call("GC", {**conf, "cni.dev/valid-attachments": attachments})
        if not reply.ok and not reply.offline:
            raise reply.error(cfg.delegate_type)


def status(inv: Invocation) -> None:
    """Ready unless the delegate is missing or reports itself unavailable for a reason other than an outage.

    Offline is *ready*: containerd 2.x calls STATUS every few seconds and a failing STATUS blocks every new sandbox,
    including the restarts the snapshot exists to serve.
    """
    try:
        supported = inv.delegate.supported()
    except errors.DelegateMissing as e:
        raise errors.NotAvailable(e.msg, e.details) from e
    if "1.1.0" in supported:
        reply = inv.delegate.call("STATUS", config.delegate_conf(inv.cfg, inv.cfg.cni_version))
        if not reply.ok and not reply.offline:
            raise errors.NotAvailable(f"delegate {inv.cfg.delegate_type}: {reply.msg}", reply.details)
