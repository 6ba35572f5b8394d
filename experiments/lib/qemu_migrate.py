#!/usr/bin/env python3
"""Live-migrate the test guest between two QEMUs over loopback TCP and print
one JSON object on stdout (QEMU's side of the comparison with migvm).

Normally run through experiments/qemu_migrate.sh, which gives it a private
network namespace (so that loopback byte counts are only this migration's)
and a temporary directory that it cleans up whatever happens. See
experiments/QEMU.md for what is measured and how to read it.
"""

import argparse
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import migbench as mb  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_KERNEL = os.path.join(REPO, "build", "vmm", "testguest", "testguest.elf")
MIB = 1 << 20

POLL_S = 0.05   # query-migrate period: cheap, and fine enough for per_round


class Abort(Exception):
    """Stop the run (signal, hard time limit) and report why."""


class QMPError(Exception):
    pass


class QMP:
    """Minimal QMP client: one JSON object per line over a unix socket.
    Events that arrive while waiting for a reply are kept in `events`."""

    def __init__(self, path, timeout, alive=None):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if alive is not None and not alive():
                    raise QMPError("QEMU exited before its QMP socket %s appeared" % path)
                if time.monotonic() > deadline:
                    raise QMPError("no QMP socket at %s after %.0f s" % (path, timeout))
                time.sleep(0.05)
        s.settimeout(timeout)
        self.sock = s
        self.rfile = s.makefile("rb")
        self.events = []
        greeting = self._read()
        self.version = greeting.get("QMP", {}).get("version", {}).get("qemu", {})
        self.cmd("qmp_capabilities")

    def _read(self):
        try:
            line = self.rfile.readline()
        except socket.timeout:
            raise QMPError("QMP reply timed out")
        if not line:
            raise QMPError("QMP connection closed (QEMU exited?)")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise QMPError("%s: %s" % (name, r["error"].get("desc", r["error"])))
            elif "return" in r:
                return r["return"]

    def event_time(self, name, pred=None):
        """Wall-clock time (s) of the last event `name` matching pred, or None."""
        t = None
        for e in self.events:
            if e["event"] == name and (pred is None or pred(e)):
                ts = e["timestamp"]
                t = ts["seconds"] + ts["microseconds"] / 1e6
        return t

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# Load libc in the parent: the child only calls into it between fork and exec.
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent():
    # PR_SET_PDEATHSIG: a QEMU never outlives this script, even on SIGKILL.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)


class Qemu:
    def __init__(self, name, argv, workdir):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        with open(os.path.join(workdir, "pids"), "a") as f:
            f.write("%d\n" % self.p.pid)
        self.qmp = None

    def alive(self):
        return self.p.poll() is None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()[-n:]
        except OSError:
            return []

    def stop(self):
        if self.qmp is not None:
            if self.alive():
                try:
                    self.qmp.sock.settimeout(2)
                    self.qmp.cmd("quit")
                except (QMPError, OSError):
                    pass
            self.qmp.close()
        if self.alive():
            try:
                self.p.wait(2)
            except subprocess.TimeoutExpired:
                self.p.kill()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


# --------------------------------------------------------------------------
# Modes

COMPONENTS = ("plain", "multifd", "multifd-zstd", "xbzrle", "auto-converge", "return-path",
              "tls")


def mode_config(a):
    """Capabilities and parameters for --mode (components joined by '+')."""
    parts = a.mode.split("+")
    caps = {"events": True}
    params = {"downtime-limit": a.downtime_ms, "max-bandwidth": a.max_bandwidth}
    for p in parts:
        if p not in COMPONENTS:
            raise ValueError("unknown mode component %r (choose from %s, joined by '+')"
                             % (p, ", ".join(COMPONENTS)))
        if p in ("multifd", "multifd-zstd"):
            caps["multifd"] = True
            params["multifd-channels"] = a.multifd_channels
            if p == "multifd-zstd":
                params["multifd-compression"] = "zstd"
                params["multifd-zstd-level"] = a.zstd_level
        elif p == "xbzrle":
            caps["xbzrle"] = True
            params["xbzrle-cache-size"] = a.xbzrle_cache
        elif p == "auto-converge":
            caps["auto-converge"] = True
            params["cpu-throttle-initial"] = a.throttle_initial
            params["cpu-throttle-increment"] = a.throttle_increment
        elif p == "return-path":
            caps["return-path"] = True
        elif p == "tls":
            # tls-creds-psk objects of qemu_argv, the same key on both
            params["tls-creds"] = "tls0"
    if caps.get("multifd") and caps.get("xbzrle"):
        raise ValueError("QEMU's multifd sends whole pages and never uses xbzrle: "
                         "combine xbzrle with plain migration only")
    if "multifd" in parts and "multifd-zstd" in parts:
        raise ValueError("choose one of multifd, multifd-zstd")
    return caps, params


def configure(qmp, caps, params):
    qmp.cmd("migrate-set-capabilities",
            capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
    qmp.cmd("migrate-set-parameters", **params)


# --------------------------------------------------------------------------

# Trace points (QEMU's "log" trace backend, wall-clock stamped with
# -msg timestamp=on) that mark the downtime as migvm defines it: the source
# leaves "running" (runstate_set, just before it pauses the vCPUs) and the
# destination enters "running" (just before its vCPUs resume).
TRACE_EVENTS = ("runstate_set", "migration_thread_low_pending",
                "qemu_loadvm_state_post_main", "process_incoming_migration_co_end")


def parse_trace(path):
    """[(wall-clock s, event, args)] from a QEMU log-backend trace file."""
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                head, sep, rest = line.partition(":")
                pid, at, ts = head.partition("@")
                if not sep or not at:
                    continue
                name, _, args = rest.strip().partition(" ")
                try:
                    out.append((float(ts), name, args))
                except ValueError:
                    continue
    except OSError:
        pass
    return out


def trace_time(trace, name, contains=""):
    return next((t for t, n, args in trace if n == name and contains in args), None)


def qemu_argv(a, name, workdir, console, qmp_path, incoming):
    machine = "microvm" + ("," + a.machine_opts if a.machine_opts else "")
    argv = [a.qemu, "-name", "migbench-" + name,
            "-M", machine, "-accel", "kvm", "-cpu", a.cpu,
            "-m", "%dM" % a.mem, "-smp", str(a.cpus),
            "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "file:" + console,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", a.kernel, "-append", a.append]
    if a.initrd:
        argv += ["-initrd", a.initrd]
    argv += ["-qmp", "unix:%s,server=on,wait=off" % qmp_path,
             "-msg", "timestamp=on", "-D", os.path.join(workdir, name + ".trace")]
    for ev in TRACE_EVENTS:
        argv += ["-trace", ev]
    if getattr(a, "tls_dir", None):
        # the client names its key ("username"); QEMU refuses one on the server
        argv += ["-object", "tls-creds-psk,id=tls0,dir=%s,%s"
                 % (a.tls_dir, "endpoint=server" if incoming
                    else "endpoint=client,username=qemu")]
    if incoming:
        argv += ["-incoming", "defer"] + a.dest_extra
    else:
        argv += a.src_extra
    return argv + a.qemu_extra


def guest_append(a):
    return mb.guest_cmdline(a)


def migrate(a, wd, result):
    caps, params = mode_config(a)
    result["settings"]["capabilities"] = caps
    result["settings"]["parameters"] = params

    src_con_path = os.path.join(wd, "src.console")
    dst_con_path = os.path.join(wd, "dst.console")
    a.tls_dir = None
    if "tls" in a.mode.split("+"):
        # QEMU's PSK file: "username:key in hex" in DIR/keys.psk
        a.tls_dir = os.path.join(wd, "tls")
        os.mkdir(a.tls_dir, 0o700)
        fd = os.open(os.path.join(a.tls_dir, "keys.psk"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, ("qemu:%s\n" % os.urandom(32).hex()).encode())
        os.close(fd)
    dst = Qemu("dst", qemu_argv(a, "dst", wd, dst_con_path, os.path.join(wd, "dst.qmp"), True), wd)
    src = Qemu("src", qemu_argv(a, "src", wd, src_con_path, os.path.join(wd, "src.qmp"), False), wd)
    result["_procs"] = [src, dst]
    result["settings"]["qemu_argv_src"] = src.argv

    # -mem-prealloc backs all guest RAM first: 1-6 s per GiB on this machine
    dst.qmp = QMP(os.path.join(wd, "dst.qmp"), 20 + 10 * a.mem / 1024, dst.alive)
    src.qmp = QMP(os.path.join(wd, "src.qmp"), 20, src.alive)
    v = src.qmp.version
    result["qemu_version"] = "%s.%s.%s" % (v.get("major"), v.get("minor"), v.get("micro"))

    # Destination: listen on a port the kernel picks (no race with other runs).
    configure(dst.qmp, caps, params)
    dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
    addrs = dst.qmp.cmd("query-migrate").get("socket-address", [])
    port = next((int(x["port"]) for x in addrs if x.get("type") == "inet"), None)
    if not port:
        raise QMPError("destination did not report its listening port: %r" % addrs)
    result["port"] = port

    # Source: boot, wait until the guest has touched its memory, let it run.
    con = mb.Console(src_con_path)

    def booted():
        con.poll()
        if not src.alive():
            raise QMPError("source QEMU exited during boot: %s" % " | ".join(src.log_tail(5)))
        why = con.failed()
        if why:
            raise QMPError(why)
        return con.ready is not None
    t_boot = time.monotonic()
    mb.wait_for(booted, a.boot_timeout, 0.1, "the guest's 'ready' line")
    result["guest_boot_to_ready_s"] = round(time.monotonic() - t_boot, 2)
    result["guest_ready"] = con.ready
    time.sleep(a.settle)
    con.poll()
    if con.failed():
        raise QMPError(con.failed())
    result["src_hb_before"] = {k: v for k, v in con.hb[-1].items() if k != "t"} if con.hb else None
    result["src_mismatches_before"] = con.mismatches()

    blocked = src.qmp.cmd("query-migrate")
    if blocked.get("blocked"):
        raise QMPError("migration blocked: %s" % blocked.get("blocked-reasons"))
    configure(src.qmp, caps, params)

    lo0 = mb.lo_bytes() if mb.private_netns() else None
    wall0 = time.time()
    t0 = time.monotonic()
    src.qmp.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)

    polls = 0
    last_sync = None
    per_round = []
    throttle_max = 0
    status = None
    while True:
        if not src.alive():
            raise QMPError("source QEMU exited during migration: %s" % " | ".join(src.log_tail(5)))
        if not dst.alive():
            # The source sees the broken connection and fails; keep polling.
            result.setdefault("dst_exited", "exit status %s: %s" % (
                dst.p.returncode, " | ".join(dst.log_tail(5))))
        info = src.qmp.cmd("query-migrate")
        status = info.get("status")
        el = (time.monotonic() - t0) * 1000
        ram = info.get("ram", {})
        sync = ram.get("dirty-sync-count")
        throttle_max = max(throttle_max, info.get("cpu-throttle-percentage", 0))
        polls += 1
        if sync is not None and sync != last_sync and status == "active":
            last_sync = sync
            per_round.append({
                "round": sync, "t_ms": round(el), "transferred": ram.get("transferred"),
                "remaining": ram.get("remaining"), "dirty_pages_rate": ram.get("dirty-pages-rate"),
                "mbps": ram.get("mbps"), "expected_downtime_ms": info.get("expected-downtime"),
                "cpu_throttle_percentage": info.get("cpu-throttle-percentage", 0)})
        if status in ("completed", "failed", "cancelled"):
            break
        if el > a.timeout * 1000:
            result["status"] = "timeout"
            result["error"] = "migration not finished after %d s (status %s); cancelled" % (a.timeout, status)
            try:
                src.qmp.cmd("migrate_cancel")
                mb.wait_for(lambda: src.qmp.cmd("query-migrate").get("status") == "cancelled",
                            10, 0.1, "cancel")
            except (QMPError, TimeoutError) as e:
                result["error"] += " (cancel: %s)" % e
            break
        time.sleep(POLL_S)
    result["observed_ms"] = round((time.monotonic() - t0) * 1000)

    if status == "completed":
        # QEMU 7.2 sets "completed" before migration_calculate_complete()
        # has filled in total-time and downtime (a 2024 upstream patch moved
        # that computation before the state change); postmigrate is set after
        # it, so read the final figures only then.
        mb.wait_for(lambda: src.qmp.cmd("query-status")["status"] == "postmigrate",
                    10, POLL_S, "source runstate postmigrate")
        info = src.qmp.cmd("query-migrate")
        dst_status = mb.wait_for(
            lambda: (lambda s: s if s["status"] != "inmigrate" else None)(dst.qmp.cmd("query-status")),
            a.timeout, POLL_S, "destination to leave inmigrate")
        result["dst_runstate"] = dst_status["status"]
        result["dst_query_migrate"] = dst.qmp.cmd("query-migrate")
    else:
        info = src.qmp.cmd("query-migrate")
    lo1 = mb.lo_bytes() if lo0 is not None else None

    ram = info.get("ram", {})
    xb = info.get("xbzrle-cache") or {}
    if result["status"] != "timeout":
        result["status"] = status
    if status == "failed":
        result["error"] = info.get("error-desc", "migration failed")
    result.update({
        "total_time_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_time_ms": info.get("setup-time"),
        "rounds": ram.get("dirty-sync-count"),
        "bytes_on_wire": ram.get("transferred"),
        "bytes_on_wire_source": "qemu-ram-transferred",
        "ram_transferred": ram.get("transferred"),
        "pages_sent": (ram.get("normal") or 0) + (xb.get("pages") or 0),
        "zero_pages": ram.get("duplicate"),
        "normal_pages": ram.get("normal"),
        "xbzrle_pages": xb.get("pages"),
        "downtime_bytes": ram.get("downtime-bytes"),
        "mbps": ram.get("mbps"),
        "cpu_throttle_percentage_max": throttle_max,
        "per_round": per_round,
        "polls": polls,
    })
    if lo1 is not None:
        # QEMU 7.2 counts multifd pages before compression; the loopback
        # counter of our private namespace sees what really crossed.
        result["wire_bytes_lo"] = lo1 - lo0
        result["bytes_on_wire"] = lo1 - lo0
        result["bytes_on_wire_source"] = "loopback"
    if result["bytes_on_wire"]:
        result["compression_ratio"] = round(
            (ram.get("normal-bytes") or 0) / result["bytes_on_wire"], 3)

    # Downtime as migvm defines it: source pause to destination resume. Both
    # QEMUs stamp trace lines (gettimeofday) and QMP events (g_get_real_time)
    # with the host's wall clock. The trace points are the tighter bounds:
    # QMP's STOP comes only after every vCPU has paused.
    src.qmp.cmd("query-status")   # flush events queued before this reply
    if status == "completed":
        st = parse_trace(os.path.join(wd, "src.trace"))
        dt = parse_trace(os.path.join(wd, "dst.trace"))
        t_pause = trace_time(st, "runstate_set", "(finish-migrate)")
        t_run = trace_time(dt, "runstate_set", "new_state 9 (running)") or \
            trace_time(dt, "runstate_set", "(running)")
        t_stop = src.qmp.event_time("STOP")
        t_resume = dst.qmp.event_time("RESUME")
        if t_run or t_resume:
            # QEMU's total-time ends when the source is done sending; the
            # destination may still be loading (multifd) for a long while.
            result["total_time_to_resume_ms"] = round(((t_run or t_resume) - wall0) * 1000, 1)
        if t_pause and t_run:
            result["downtime_stop_to_resume_ms"] = round((t_run - t_pause) * 1000, 1)
            result["downtime_source"] = "trace"
        elif t_stop and t_resume:
            result["downtime_stop_to_resume_ms"] = round((t_resume - t_stop) * 1000, 1)
            result["downtime_source"] = "qmp-events"
        if t_stop and t_resume:
            result["downtime_qmp_events_ms"] = round((t_resume - t_stop) * 1000, 1)
        rel = lambda t: round((t - wall0) * 1000, 1) if t else None
        result["trace_ms"] = {
            "src_switchover_decision": rel(trace_time(st, "migration_thread_low_pending")),
            "src_pause": rel(t_pause),
            "src_postmigrate": rel(trace_time(st, "runstate_set", "(postmigrate)")),
            "dst_loaded": rel(trace_time(dt, "qemu_loadvm_state_post_main")),
            "dst_running": rel(t_run),
        }
        result["events_ms"] = {
            "src_" + e["data"]["status"] if e["event"] == "MIGRATION" else "src_" + e["event"]:
                round((e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6 - wall0) * 1000, 1)
            for e in src.qmp.events if e["event"] in ("MIGRATION", "STOP")}
        result["events_ms"].update({
            "dst_" + e["data"]["status"] if e["event"] == "MIGRATION" else "dst_" + e["event"]:
                round((e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6 - wall0) * 1000, 1)
            for e in dst.qmp.events if e["event"] in ("MIGRATION", "RESUME")})
    result["query_migrate"] = info

    # The guest must keep running on the destination with no mismatch.
    con.poll()
    result["src_mismatches"] = con.mismatches()
    if status == "completed" and result.get("dst_runstate") == "running":
        dcon = mb.Console(dst_con_path)
        g = mb.check_guest(dcon, a.check_seconds, min_hb=2, alive=dst.alive)
        if result["src_mismatches"]:
            g["guest_ok"] = False
            g["why"] = (g.get("why", "") + "; " if g.get("why") else "") + \
                "%d mismatches on the source before switchover" % result["src_mismatches"]
        if g["hb_first"] and result["src_hb_before"]:
            g["hb_seq_continues"] = g["hb_first"]["seq"] > result["src_hb_before"]["seq"]
        result["guest"] = g
        result["guest_ok"] = g["guest_ok"]
    else:
        result["guest_ok"] = False
        if src.alive() and info.get("status") in ("failed", "cancelled"):
            # The promise of live migration: a failed one leaves the source
            # running, correctly.
            src.qmp.cmd("query-status")
            result["source_runstate"] = src.qmp.cmd("query-status")["status"]
            result["source_guest"] = mb.check_guest(con, a.check_seconds, min_hb=2,
                                                    alive=src.alive)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="qemu_migrate.sh",
        description="Live-migrate the test guest between two QEMUs over loopback TCP "
                    "and print one JSON object.")
    g = ap.add_argument_group("guest")
    g.add_argument("--mem", type=int, default=1024, help="guest RAM, MiB (default 1024)")
    g.add_argument("--cpus", type=int, default=2, help="vCPUs = guest cpus= (default 2)")
    g.add_argument("--touch", default="512M", help="guest touch= (default 512M)")
    g.add_argument("--wss", default="64M", help="guest wss= (default 64M)")
    g.add_argument("--rate", default="max", help="guest rate= pages/s or max (default max)")
    g.add_argument("--fill", default="random", choices=("random", "text", "sparse"))
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--hb", type=int, default=None, help="guest hb= period, ms (guest default 1000)")
    g.add_argument("--guest-args", default="", help="more guest parameters, e.g. 'idle=halt'")
    mb.add_kernel_args(g, default_kernel=DEFAULT_KERNEL)
    m = ap.add_argument_group("migration")
    m.add_argument("--mode", default="plain",
                   help="plain | multifd | multifd-zstd | xbzrle | auto-converge | return-path | tls, "
                        "combined with '+', e.g. xbzrle+auto-converge (default plain)")
    m.add_argument("--downtime-ms", type=int, default=300, help="downtime-limit (QEMU default 300)")
    m.add_argument("--max-bandwidth", default="100G",
                   help="max-bandwidth, bytes/s with K/M/G suffix (default 100G: unlimited; "
                        "QEMU's own default is 128 MiB/s)")
    m.add_argument("--multifd-channels", type=int, default=2)
    m.add_argument("--zstd-level", type=int, default=1)
    m.add_argument("--xbzrle-cache", default=None,
                   help="xbzrle-cache-size (default: max(64M, 2 x wss) rounded to a power of 2)")
    m.add_argument("--throttle-initial", type=int, default=20, help="cpu-throttle-initial %%")
    m.add_argument("--throttle-increment", type=int, default=10, help="cpu-throttle-increment %%")
    r = ap.add_argument_group("run")
    r.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    r.add_argument("--cpu", default="host,-arch-capabilities",
                   help="-cpu model (PVM rejects the arch-capabilities MSR)")
    r.add_argument("--machine-opts", default="", help="extra -M microvm,... options")
    r.add_argument("--qemu-extra", default="", help="extra QEMU arguments (both sides)")
    r.add_argument("--dest-extra", default="",
                   help="extra QEMU arguments for the destination only, e.g. -mem-prealloc")
    r.add_argument("--src-extra", default="",
                   help="extra QEMU arguments for the source only (e.g. a memory backend "
                   "that differs from the destination's under the same id)")
    r.add_argument("--settle", type=float, default=2.0, help="seconds to run after 'ready' (default 2)")
    r.add_argument("--timeout", type=int, default=120, help="migration time limit, s (default 120)")
    r.add_argument("--boot-timeout", type=float, default=None,
                   help="time limit to 'ready', s (default 30 + 10 per GiB touched; "
                        "a Linux VM 120 more)")
    r.add_argument("--check-seconds", type=float, default=4.0,
                   help="watch the guest on the destination this long (default 4)")
    r.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    a.max_bandwidth = mb.parse_size(a.max_bandwidth)
    touched = max(mb.parse_size(a.touch), mb.parse_size(a.wss))
    if a.xbzrle_cache is None:
        want = max(64 * MIB, 2 * mb.parse_size(a.wss))
        size = 1
        while size < want:
            size <<= 1
        a.xbzrle_cache = min(size, a.mem * MIB // 2)
    else:
        a.xbzrle_cache = mb.parse_size(a.xbzrle_cache)
    if a.boot_timeout is None:
        a.boot_timeout = mb.boot_timeout(a, touched)
    a.qemu_extra = shlex.split(a.qemu_extra)
    a.dest_extra = shlex.split(a.dest_extra)
    a.src_extra = shlex.split(a.src_extra)
    a.append = guest_append(a)
    return a


def main(argv=None):
    a = parse_args(argv)
    result = {"tool": "qemu", "mode": a.mode, "status": "error"}
    result["settings"] = {
        "mem_mib": a.mem, "cpus": a.cpus, "touch": a.touch, "wss": a.wss, "rate": a.rate,
        "fill": a.fill, "seed": a.seed, "append": a.append, "downtime_ms": a.downtime_ms,
        "max_bandwidth": a.max_bandwidth, "settle_s": a.settle, "timeout_s": a.timeout,
        "kernel": a.kernel, "initrd": a.initrd, "netns_private": mb.private_netns(),
    }
    # Everything is bounded: boot, settle, migration, checks, plus slack.
    hard_limit = int(a.boot_timeout + a.settle + a.timeout + a.check_seconds + 60)

    def on_signal(signum, frame):
        raise Abort("hard time limit (%d s) reached" % hard_limit if signum == signal.SIGALRM
                    else "interrupted by signal %d" % signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, on_signal)
    signal.alarm(hard_limit)

    wd = a.workdir or tempfile.mkdtemp(prefix="qemu-mig.")
    try:
        if not os.path.isfile(a.kernel):
            raise QMPError("no guest kernel at %s (the test guest: cmake --build build "
                           "--target testguest)" % a.kernel)
        if a.initrd and not os.path.isfile(a.initrd):
            raise QMPError("no initrd at %s" % a.initrd)
        migrate(a, wd, result)
    except (Abort, QMPError, TimeoutError, OSError, ValueError) as e:
        if result.get("status") in (None, "error", "active", "setup"):
            result["status"] = "timeout" if isinstance(e, TimeoutError) else "error"
        result.setdefault("error", str(e))
        result.setdefault("guest_ok", False)
    finally:
        signal.alarm(0)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        procs = result.pop("_procs", [])
        if result.get("status") != "completed" or not result.get("guest_ok"):
            for q in procs:
                result.setdefault("qemu_log", {})[q.name] = q.log_tail()
        for q in procs:
            q.stop()
        if not a.workdir:
            shutil.rmtree(wd, ignore_errors=True)
    result["record"] = mb.record(tools={"qemu": [a.qemu, "--version"]})
    mb.emit(result)
    return 0 if result.get("status") == "completed" and result.get("guest_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
