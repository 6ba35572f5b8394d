#!/usr/bin/env python3
"""Live-migrate the test guest between two migvm processes over loopback TCP
and print one JSON object on stdout (migvm's side of the comparison with
QEMU; the same options and fields as qemu_migrate.py).

Normally run through experiments/migvm_migrate.sh, which gives it a private
network namespace (so that loopback byte counts are only this migration's)
and a temporary directory that it cleans up whatever happens.

How it is driven (the same steps as the QEMU side):
1. Destination: `migvm --incoming tcp:127.0.0.1:0 --token T --mem M --cpus N`;
   the port it picked is read from its stderr.
2. Source: `migvm --mem M --cpus N --cmdline "..." --control SOCK`; wait for
   the guest's `ready` line, let it run --settle seconds (2), then start the
   migration over the control channel (`migvm ctl SOCK migrate URI TOKEN
   compress=.. connections=.. downtime-ms=..`), so the settle time is the
   QEMU side's exactly (not --migrate-after, which counts from process start).
3. The source prints its result JSON on stdout and exits once the
   destination has committed; the destination's console is then watched for
   --check-seconds (4) with migbench.check_guest() -> guest_ok.
"""

import argparse
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import migbench as mb  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MIGVM = os.path.join(REPO, "build", "vmm", "migvm")

# --mode components (joined by '+') -> migvm migration parameters
MODES = {
    "default": {"compress": "auto"},
    "zstd": {"compress": "on"},
    "raw": {"compress": "off"},
    "conn1": {"connections": "1"},
    "conn2": {"connections": "2"},
    "bitmap": {"dirty-log": "bitmap"},
    "clear": {"dirty-log": "clear"},
    "ring": {"dirty-log": "ring"},
    "verify": {"verify": "1"},
    # TLS 1.3 with a pre-shared key on every connection (--tls-psk-file on
    # both migvm; no parameter of the migration itself)
    "tls": {},
}


class Abort(Exception):
    pass


class RunError(Exception):
    pass


try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent():
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)


class Proc:
    def __init__(self, name, argv, workdir):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(workdir, name + ".out")
        self.err_path = os.path.join(workdir, name + ".err")
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        # MIGVM_DEBUG: libmigrate's steps on stderr, stamped with
        # CLOCK_MONOTONIC (the same clock in both processes): the traced
        # downtime below, as QEMU's side is traced.
        env = dict(os.environ, MIGVM_DEBUG="1")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out,
                                  stderr=self.err, preexec_fn=_die_with_parent, env=env)
        with open(os.path.join(workdir, "pids"), "a") as f:
            f.write("%d\n" % self.p.pid)

    def alive(self):
        return self.p.poll() is None

    def text(self, which="err"):
        try:
            with open(self.err_path if which == "err" else self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n=8):
        return self.text("err").splitlines()[-n:]

    def stop(self):
        if self.alive():
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.out.close()
        self.err.close()


def mode_params(a):
    params = {"downtime-ms": str(a.downtime_ms)}
    if a.max_bandwidth:
        params["max-bandwidth"] = a.max_bandwidth
    for p in a.mode.split("+"):
        if p not in MODES:
            raise ValueError("unknown mode component %r (choose from %s, joined by '+')"
                             % (p, ", ".join(MODES)))
        params.update(MODES[p])
    if a.connections:
        params["connections"] = str(a.connections)
    return params


def guest_cmdline(a):
    return mb.guest_cmdline(a)


def debug_stamp(text, what):
    """The CLOCK_MONOTONIC ms of the last MIGVM_DEBUG line saying `what`."""
    t = None
    for line in text.splitlines():
        if line.startswith("migvm: ") and line.endswith("libmigrate: " + what):
            try:
                t = float(line.split()[1])
            except (IndexError, ValueError):
                pass
    return t


def first_json(text):
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def migrate(a, wd, result):
    params = mode_params(a)
    result["settings"]["parameters"] = params
    token = os.urandom(16).hex()
    src_con_path = os.path.join(wd, "src.console")
    dst_con_path = os.path.join(wd, "dst.console")
    ctl_path = os.path.join(wd, "src.ctl")
    mem = ["--mem", str(a.mem), "--cpus", str(a.cpus)] + a.migvm_extra
    if "tls" in a.mode.split("+"):
        key = os.path.join(wd, "tls.psk")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32))
        os.close(fd)
        mem += ["--tls-psk-file", key]

    dst = Proc("dst", [a.migvm] + mem + a.dest_extra
               + ["--incoming", "tcp:127.0.0.1:0", "--token", token,
                  "--console", dst_con_path], wd)
    result["_procs"] = [dst]

    def port():
        if not dst.alive():
            raise RunError("destination migvm exited: %s" % " | ".join(dst.tail(5)))
        for line in dst.text().splitlines():
            if "incoming migration on port" in line:
                return int(line.rsplit(" ", 1)[1])
        return None
    # --prealloc backs all guest RAM first: 1-6 s per GiB on this machine
    p = mb.wait_for(port, 20 + 10 * a.mem / 1024, 0.05, "the destination's port")
    result["port"] = p

    boot = []
    if a.kernel:
        boot = ["--kernel", a.kernel] + (["--initrd", a.initrd] if a.initrd else [])
    src = Proc("src", [a.migvm] + mem + boot + ["--cmdline", a.cmdline,
                                                "--console", src_con_path,
                                                "--control", ctl_path], wd)
    result["_procs"].append(src)
    result["settings"]["migvm_argv_src"] = src.argv

    con = mb.Console(src_con_path)

    def booted():
        con.poll()
        if not src.alive():
            raise RunError("source migvm exited during boot: %s" % " | ".join(src.tail(5)))
        why = con.failed()
        if why:
            raise RunError(why)
        return con.ready is not None
    t_boot = time.monotonic()
    mb.wait_for(booted, a.boot_timeout, 0.1, "the guest's 'ready' line")
    result["guest_boot_to_ready_s"] = round(time.monotonic() - t_boot, 2)
    result["guest_ready"] = con.ready
    time.sleep(a.settle)
    con.poll()
    if con.failed():
        raise RunError(con.failed())
    result["src_hb_before"] = {k: v for k, v in con.hb[-1].items() if k != "t"} if con.hb else None
    result["src_mismatches_before"] = con.mismatches()

    lo0 = mb.lo_bytes() if mb.private_netns() else None
    t0 = time.monotonic()
    ctl = subprocess.run([a.migvm, "ctl", ctl_path, "migrate", "tcp:127.0.0.1:%d" % p, token]
                         + ["%s=%s" % kv for kv in params.items()],
                         capture_output=True, text=True, timeout=20)
    if ctl.returncode != 0:
        raise RunError("migvm ctl migrate failed (%d): %s" % (ctl.returncode,
                                                              (ctl.stderr or ctl.stdout).strip()))
    # The source prints its result and exits when the destination committed
    # (or prints a failed result and keeps running).
    res = None
    status = None
    while True:
        res = first_json(src.text("out"))
        if res is not None:
            break
        if not src.alive():
            break
        if time.monotonic() - t0 > a.timeout:
            status = "timeout"
            subprocess.run([a.migvm, "ctl", ctl_path, "cancel"], capture_output=True, timeout=10)
            mb.wait_for(lambda: first_json(src.text("out")) or not src.alive(), 15, 0.1,
                        "the source after cancel")
            res = first_json(src.text("out"))
            break
        time.sleep(0.05)
    result["observed_ms"] = round((time.monotonic() - t0) * 1000)
    lo1 = mb.lo_bytes() if lo0 is not None else None
    if res is None:
        raise RunError("source printed no result (exit %s): %s"
                       % (src.p.poll(), " | ".join(src.tail(5))))
    result["migvm_result"] = res
    for k in ("total_time_ms", "downtime_ms", "setup_time_ms", "rounds", "bytes_on_wire",
              "pages_sent", "zero_pages", "per_round", "compression_ratio", "throttle_pct",
              "error"):
        if k in res:
            result[k] = res[k]
    st = res.get("status")
    result["status"] = status or ("completed" if st in ("done", "completed", "ok", "success")
                                  else (st or "error"))
    result["migvm_status"] = st
    result["bytes_on_wire_migvm"] = res.get("bytes_on_wire")
    result["bytes_on_wire_source"] = "migvm"
    if lo1 is not None:
        result["wire_bytes_lo"] = lo1 - lo0
        result["bytes_on_wire"] = lo1 - lo0
        result["bytes_on_wire_source"] = "loopback"
    # Same names as the QEMU side's traced figures. The downtime from the
    # two processes' stamps (source pause -> destination resume, one clock);
    # migvm's own figure (downtime_ms) is the library's estimate across two
    # clocks, kept beside it. The total time ends when the destination's
    # activation is confirmed. The two ends are stamped where QEMU's are:
    # just before the vCPUs are told to stop (QEMU's runstate_set to
    # finish-migrate comes before pause_all_vcpus) and just before they are
    # told to run (its runstate_set to running comes before its run-state
    # handlers and resume_all_vcpus; ours, "activating", before ops->resume
    # wakes the vCPU threads). The end after ops->resume is kept beside it,
    # as downtime_to_vcpus_woken_ms.
    t_pause = debug_stamp(src.text(), "stop-and-copy: pausing the VM")
    t_run = debug_stamp(dst.text(), "activating: resuming the VM")
    t_woken = debug_stamp(dst.text(), "activated: VM resumed")
    if t_pause is not None and t_woken is not None and t_woken >= t_pause:
        result["downtime_to_vcpus_woken_ms"] = round(t_woken - t_pause, 3)
    if t_pause is not None and t_run is not None and t_run >= t_pause:
        result["downtime_stop_to_resume_ms"] = round(t_run - t_pause, 3)
        result["downtime_source"] = "trace"
    else:
        result["downtime_stop_to_resume_ms"] = result.get("downtime_ms")
        result["downtime_source"] = "migvm"
    result["total_time_to_resume_ms"] = result.get("total_time_ms")

    con.poll()
    result["src_mismatches"] = con.mismatches()
    if result["status"] == "completed":
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
        try:
            src.p.wait(10)
            result["src_exit"] = src.p.returncode
        except subprocess.TimeoutExpired:
            result["src_exit"] = "still running 10 s after the commit"
    else:
        result["guest_ok"] = False
        if src.alive():
            result["source_guest"] = mb.check_guest(con, a.check_seconds, min_hb=2,
                                                    alive=src.alive)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="migvm_migrate.sh",
        description="Live-migrate the test guest (or a Linux VM) between two migvm "
                    "processes over loopback TCP and print one JSON object.")
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
    mb.add_kernel_args(g, default_kernel=None)
    m = ap.add_argument_group("migration")
    m.add_argument("--mode", default="default",
                   help="default (compress auto) | zstd (compress on) | raw (compress off) | "
                        "conn1 | conn2 (connections; default 2) | bitmap | clear | ring (dirty log) | "
                        "verify | tls (TLS 1.3, a pre-shared key), joined "
                        "with '+', e.g. zstd+conn2 (default: default)")
    m.add_argument("--downtime-ms", type=int, default=300, help="target downtime (default 300)")
    m.add_argument("--max-bandwidth", default=None, help="cap, bytes/s (default none)")
    m.add_argument("--connections", type=int, default=None, help="override connections")
    r = ap.add_argument_group("run")
    r.add_argument("--migvm", default=DEFAULT_MIGVM, help="migvm binary (default %(default)s)")
    r.add_argument("--migvm-extra", default="", help="extra migvm options (both sides)")
    r.add_argument("--dest-extra", default="",
                   help="extra migvm options for the destination only, e.g. --prealloc")
    r.add_argument("--settle", type=float, default=2.0, help="seconds to run after 'ready' (default 2)")
    r.add_argument("--timeout", type=int, default=120, help="migration time limit, s (default 120)")
    r.add_argument("--boot-timeout", type=float, default=None,
                   help="time limit to 'ready', s (default 30 + 10 per GiB touched; "
                        "a Linux VM 120 more)")
    r.add_argument("--check-seconds", type=float, default=4.0,
                   help="watch the guest on the destination this long (default 4)")
    r.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    touched = max(mb.parse_size(a.touch), mb.parse_size(a.wss))
    if a.boot_timeout is None:
        a.boot_timeout = mb.boot_timeout(a, touched)
    a.migvm_extra = shlex.split(a.migvm_extra)
    a.dest_extra = shlex.split(a.dest_extra)
    a.cmdline = guest_cmdline(a)
    return a


def main(argv=None):
    a = parse_args(argv)
    result = {"tool": "migvm", "mode": a.mode, "status": "error"}
    result["settings"] = {
        "mem_mib": a.mem, "cpus": a.cpus, "touch": a.touch, "wss": a.wss, "rate": a.rate,
        "fill": a.fill, "seed": a.seed, "append": a.cmdline, "downtime_ms": a.downtime_ms,
        "max_bandwidth": a.max_bandwidth, "settle_s": a.settle, "timeout_s": a.timeout,
        "migvm": a.migvm, "kernel": a.kernel, "initrd": a.initrd,
        "netns_private": mb.private_netns(),
    }
    hard_limit = int(a.boot_timeout + a.settle + a.timeout + a.check_seconds + 60)

    def on_signal(signum, frame):
        raise Abort("hard time limit (%d s) reached" % hard_limit if signum == signal.SIGALRM
                    else "interrupted by signal %d" % signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, on_signal)
    signal.alarm(hard_limit)

    wd = a.workdir or tempfile.mkdtemp(prefix="migvm-mig.")
    try:
        if not os.access(a.migvm, os.X_OK):
            raise RunError("no migvm at %s (build it: cmake --build build)" % a.migvm)
        for what, path in (("guest kernel", a.kernel), ("initrd", a.initrd)):
            if path and not os.path.isfile(path):
                raise RunError("no %s at %s" % (what, path))
        migrate(a, wd, result)
    except (Abort, RunError, TimeoutError, OSError, ValueError,
            subprocess.SubprocessError) as e:
        if result.get("status") in (None, "error"):
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
                result.setdefault("migvm_log", {})[q.name] = q.tail()
        for q in procs:
            q.stop()
        if not a.workdir:
            shutil.rmtree(wd, ignore_errors=True)
    result["record"] = mb.record()
    mb.emit(result)
    return 0 if result.get("status") == "completed" and result.get("guest_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
