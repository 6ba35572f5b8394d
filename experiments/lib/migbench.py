"""Helpers shared by the migration benchmarks (the QEMU side and the migvm side).

Python 3 standard library only. Import it (``sys.path`` to this folder) or use
it from shell scripts through its command line:

    python3 experiments/lib/migbench.py record [--settings JSON]
    python3 experiments/lib/migbench.py summarize RESULT.jsonl... [--fields a,b]
    python3 experiments/lib/migbench.py check-console FILE [--offset N]
                                        [--seconds S] [--min-hb K]
    python3 experiments/lib/migbench.py lo-bytes

What is here:
- parse_size(): "512M" -> bytes, the test guest's K/M/G suffixes.
- Console: incremental reader of the test guest's console (a file that a VMM
  appends to), parsing `ready`, `hb`, `MISMATCH`, `EXCEPTION`, `BADARG`,
  `done` lines (vmm/testguest/README.md).
- check_guest(): watch a console for a few seconds after a migration and say
  whether the guest is alive and correct there (heartbeats advancing, no
  mismatch, no exception). Both sides use it so `guest_ok` means the same.
- record(): machine, kernel, KVM flavour, git commit, time, tool versions.
- summarize(): median and spread of numeric fields over repetitions.
- lo_bytes(): bytes through the loopback interface of the current network
  namespace; in a private namespace (`unshare -n`) that is exactly the
  migration's traffic, headers and ACKs included, whatever the VMM counts.
- emit(): one JSON object on one line on stdout.
"""

import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text):
    """'512M' -> 536870912. Suffixes K, M, G, T (powers of 1024), none = bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGTkmgt]?)(?:i?[Bb])?\s*", str(text))
    if not m:
        raise ValueError("bad size %r (want e.g. 512M, 1G, 4096)" % (text,))
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def now_ms():
    return time.monotonic() * 1000.0


def emit(obj, stream=None):
    """Print one JSON object on one line (the benchmarks' stdout contract)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, sort_keys=False) + "\n")
    stream.flush()


# --------------------------------------------------------------------------
# Test guest console

_KV = re.compile(r"(\w+)=(\S+)")


def _kv(line):
    out = {}
    for k, v in _KV.findall(line):
        try:
            out[k] = int(v, 0)
        except ValueError:
            out[k] = v
    return out


class Console:
    """Reads a console file incrementally and keeps what the guest said.

    The file may not exist yet (the VMM creates it); poll() is cheap and may
    be called often. `offset` starts reading from there (to look only at what
    came after some moment).
    """

    def __init__(self, path, offset=0):
        self.path = path
        self.offset = offset
        self._partial = b""
        self.lines = []
        self.ready = None          # dict of the `ready` line
        self.banner = None         # dict of the `testguest:` line
        self.hb = []               # dicts of `hb` lines, with 't' = monotonic s
        self.mismatch_lines = []   # raw `MISMATCH` lines
        self.exceptions = []       # raw `EXCEPTION` lines
        self.badarg = []           # raw `BADARG` lines
        self.done = None           # dict of the `done` line

    def size(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def poll(self):
        """Read what was appended since the last call; return the new lines."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        parts = data.split(b"\n")
        self._partial = parts.pop()
        new = []
        t = time.monotonic()
        for raw in parts:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            new.append(line)
            self._parse(line, t)
        self.lines.extend(new)
        return new

    def _parse(self, line, t):
        if line.startswith("hb "):
            d = _kv(line)
            d["t"] = t
            self.hb.append(d)
        elif line.startswith("MISMATCH"):
            self.mismatch_lines.append(line)
        elif line.startswith("EXCEPTION"):
            self.exceptions.append(line)
        elif line.startswith("BADARG"):
            self.badarg.append(line)
        elif line.startswith("ready "):
            self.ready = _kv(line)
        elif line.startswith("testguest:"):
            self.banner = _kv(line)
        elif line.startswith("done "):
            self.done = _kv(line)

    def failed(self):
        """A reason the guest cannot be trusted any more, or None."""
        if self.badarg:
            return "guest rejected its command line: " + self.badarg[0]
        if self.exceptions:
            return "guest exception: " + self.exceptions[0]
        if self.done is not None:
            return "guest ended by itself (duration= elapsed?): done " + \
                " ".join("%s=%s" % kv for kv in self.done.items())
        return None

    def mismatches(self):
        """Mismatches the guest reported: printed lines or its own counter."""
        counted = max((h.get("mismatches", 0) for h in self.hb), default=0)
        return max(counted, len(self.mismatch_lines))


def check_guest(console, seconds=3.0, min_hb=2, alive=None, patience=60.0):
    """Watch `console` (a Console positioned where the check starts) for
    `seconds` and judge the guest: at least `min_hb` new heartbeats whose seq
    and timer ticks increase, no MISMATCH, no EXCEPTION, mismatches=0.
    Where the machine is slow (a nested host under emulation) the heartbeats
    may come later: the watch goes on past `seconds` until `min_hb` have
    come, `patience` s at most; it judges liveness, not speed (the rates
    are measured over the heartbeats seen). `alive` is an optional callable
    that returns False once the VMM died. Returns a dict with guest_ok and
    the evidence."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    last_chance = t0 + max(seconds, patience)
    start_hb = len(console.hb)
    start_mm = len(console.mismatch_lines)
    start_ex = len(console.exceptions)
    died = False
    while True:
        console.poll()
        if alive is not None and not alive():
            died = True
            break
        now = time.monotonic()
        if now >= last_chance or (now >= deadline and len(console.hb) - start_hb >= min_hb):
            break
        time.sleep(0.1)
    seconds = round(time.monotonic() - t0, 1)
    console.poll()
    hbs = console.hb[start_hb:]
    mm = console.mismatch_lines[start_mm:]
    ex = console.exceptions[start_ex:]
    why = []
    if died:
        why.append("VMM process exited")
    if len(hbs) < min_hb:
        why.append("%d heartbeats in %.1f s, wanted %d" % (len(hbs), seconds, min_hb))
    for a, b in zip(hbs, hbs[1:]):
        if not (b.get("seq", 0) > a.get("seq", 0)):
            why.append("hb seq did not increase (%s -> %s)" % (a.get("seq"), b.get("seq")))
            break
        if not (b.get("ticks", 0) > a.get("ticks", 0)):
            why.append("timer ticks did not increase (%s -> %s)" % (a.get("ticks"), b.get("ticks")))
            break
    if mm:
        why.append("%d MISMATCH lines" % len(mm))
    if any(h.get("mismatches", 0) for h in hbs):
        why.append("hb reports mismatches=%d" % max(h.get("mismatches", 0) for h in hbs))
    if ex:
        why.append(ex[0])
    strip = lambda h: {k: v for k, v in h.items() if k != "t"}
    out = {
        "guest_ok": not why,
        "seconds": seconds,
        "heartbeats": len(hbs),
        "hb_first": strip(hbs[0]) if hbs else None,
        "hb_last": strip(hbs[-1]) if hbs else None,
        "mismatch_lines": len(mm),
        "mismatch_sample": mm[:5],
        "exceptions": ex[:3],
    }
    if len(hbs) >= 2:
        dt = hbs[-1]["t"] - hbs[0]["t"]
        if dt > 0:
            out["written_per_s"] = round((hbs[-1].get("written", 0) - hbs[0].get("written", 0)) / dt)
            out["verified_per_s"] = round((hbs[-1].get("verified", 0) - hbs[0].get("verified", 0)) / dt)
    if why:
        out["why"] = "; ".join(why)
    return out


def wait_for(pred, timeout, interval=0.05, what="condition"):
    """Call pred() until it returns a true value (returned) or `timeout` s pass
    (TimeoutError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# --------------------------------------------------------------------------
# Network

def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (prefer letting the server bind
    port 0 and asking it, where it can)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def lo_bytes():
    """rx bytes of `lo` in this process's network namespace, or None."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return int(rest.split()[0])
    except OSError:
        pass
    return None


def private_netns():
    """True when this process runs in a network namespace of its own whose
    only interface is lo (then lo_bytes() counts only our traffic). Whoever
    made the namespace says so with MIGBENCH_NETNS=private in the environment
    (qemu_migrate.sh does); /proc/1/ns may not be readable to compare."""
    if os.environ.get("MIGBENCH_NETNS") != "private":
        return False
    try:
        with open("/proc/net/dev") as f:   # /sys/class/net may be the host's
            names = [l.partition(":")[0].strip() for l in f if ":" in l]
        return names == ["lo"]
    except OSError:
        return False


# --------------------------------------------------------------------------
# Records and statistics

def _run(argv, cwd=None):
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def kvm_flavour():
    if os.path.isdir("/sys/module/kvm_pvm"):
        return "pvm"
    if os.path.isdir("/sys/module/kvm_intel"):
        return "vmx"
    if os.path.isdir("/sys/module/kvm_amd"):
        return "svm"
    return "unknown" if os.path.exists("/dev/kvm") else "none"


def record(settings=None, repo=None, tools=None):
    """What a result needs to be reproducible: machine, commit, settings.
    `tools` maps a name to an argv whose first output line is its version."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo))
    rec = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "ncpu": os.cpu_count(),
        "mem_mib": mem_kib // 1024,
        "kvm": kvm_flavour(),
        "commit": commit,
        "commit_dirty": dirty,
        "loadavg": os.getloadavg()[0],
    }
    if tools:
        rec["tools"] = {k: _run(v).splitlines()[0] if _run(v) else "" for k, v in tools.items()}
    if settings is not None:
        rec["settings"] = settings
    return rec


def summarize(results, fields=None):
    """Median and spread of numeric fields over repetitions.
    `results`: list of dicts, one per run; only successful runs count (status
    "completed" and guest_ok not false, where present). Returns {runs,
    completed, field: {n, median, min, max, mean, stdev, rel_spread}} where
    rel_spread = (max - min) / median."""
    ok = [r for r in results if r.get("status", "completed") == "completed"
          and r.get("guest_ok", True) is not False]
    if fields is None:
        fields = sorted({k for r in ok for k, v in r.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {"runs": len(results), "completed": len(ok)}
    for f in fields:
        vals = [r[f] for r in ok if isinstance(r.get(f), (int, float))
                and not isinstance(r.get(f), bool)]
        if not vals:
            continue
        med = statistics.median(vals)
        out[f] = {
            "n": len(vals),
            "median": med,
            "min": min(vals),
            "max": max(vals),
            "mean": statistics.fmean(vals),
            "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "rel_spread": (max(vals) - min(vals)) / med if med else None,
        }
    return out


def summarize_by(results, key, fields):
    """summarize() per value of results[key] (e.g. per mode), in first-seen order."""
    groups = {}
    for r in results:
        groups.setdefault(str(r.get(key)), []).append(r)
    return {k: summarize(v, fields) for k, v in groups.items()}


def markdown_table(by, fields, best=None):
    """Markdown table of medians (with min-max) from summarize_by(). `best`
    names a field: the group with the lowest median of it is marked."""
    winner = None
    if best:
        cands = [(s[best]["median"], g) for g, s in by.items() if best in s]
        winner = min(cands)[1] if cands else None
    head = "| group | ok/runs | " + " | ".join(fields) + " |"
    rows = [head, "|" + "---|" * (len(fields) + 2)]
    for g, s in by.items():
        cells = []
        for f in fields:
            if f not in s:
                cells.append("-")
                continue
            v = s[f]
            fmt = (lambda x: "%.0f" % x) if abs(v["median"]) >= 100 else (lambda x: "%.3g" % x)
            cells.append(fmt(v["median"]) if v["n"] == 1 else
                         "%s (%s-%s)" % (fmt(v["median"]), fmt(v["min"]), fmt(v["max"])))
        mark = " **best**" if g == winner else ""
        rows.append("| %s%s | %d/%d | %s |" % (g, mark, s["completed"], s["runs"], " | ".join(cells)))
    return "\n".join(rows)


def run_json(argv, env=None):
    """Run a benchmark script; its result is the last JSON object line of
    its stdout. Returns that dict, or {status: error, error: why}."""
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    r = None
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                pass
    if r is None:
        r = {"status": "error",
             "error": "no JSON (exit %d): %s" % (p.returncode, p.stderr.strip()[-400:])}
    return r


def _read_jsonl(paths):
    rows = []
    for p in paths:
        with (sys.stdin if p == "-" else open(p)) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="migbench.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="print machine/commit/settings as JSON")
    r.add_argument("--settings", default=None, help="a JSON object to include")
    s = sub.add_parser("summarize", help="median/spread of numeric fields over JSON lines")
    s.add_argument("files", nargs="+", help="JSON-lines files ('-' = stdin)")
    s.add_argument("--fields", default=None, help="comma-separated fields (default: all numeric)")
    s.add_argument("--group-by", default=None, help="summarize per value of this field (e.g. mode)")
    s.add_argument("--markdown", action="store_true", help="a markdown table of medians (needs --fields)")
    s.add_argument("--best", default=None, help="with --markdown: mark the lowest median of this field")
    c = sub.add_parser("check-console", help="watch a guest console; exit 0 if guest_ok")
    c.add_argument("file")
    c.add_argument("--offset", type=int, default=None, help="byte offset to start at (default: end)")
    c.add_argument("--seconds", type=float, default=3.0)
    c.add_argument("--min-hb", type=int, default=2)
    sub.add_parser("lo-bytes", help="rx bytes of lo in this network namespace")
    a = ap.parse_args(argv)
    if a.cmd == "record":
        emit(record(json.loads(a.settings) if a.settings else None))
    elif a.cmd == "summarize":
        fields = a.fields.split(",") if a.fields else None
        rows = _read_jsonl(a.files)
        if a.markdown:
            if not fields:
                ap.error("--markdown needs --fields")
            by = summarize_by(rows, a.group_by, fields) if a.group_by else {"all": summarize(rows, fields)}
            print(markdown_table(by, fields, a.best))
        elif a.group_by:
            emit(summarize_by(rows, a.group_by, fields))
        else:
            emit(summarize(rows, fields))
    elif a.cmd == "check-console":
        con = Console(a.file)
        con.offset = con.size() if a.offset is None else a.offset
        res = check_guest(con, a.seconds, a.min_hb)
        emit(res)
        return 0 if res["guest_ok"] else 1
    elif a.cmd == "lo-bytes":
        print(lo_bytes())
    return 0


def guest_cmdline(a):
    """The guest's command line: the test guest's parameters, after the
    kernel's own arguments and "--" for a Linux VM (vmm/linuxguest: its init
    hands the words after "--" to the workload, which takes the same)."""
    args = ["cpus=%d" % a.cpus, "touch=" + a.touch, "wss=" + a.wss, "rate=" + a.rate,
            "fill=" + a.fill, "seed=%d" % a.seed]
    if a.hb is not None:
        args.append("hb=%d" % a.hb)
    line = " ".join(args + shlex.split(a.guest_args))
    if a.kernel_args:
        line = a.kernel_args + " -- " + line
    return line


def add_kernel_args(group, default_kernel):
    """--kernel, --initrd and --kernel-args, the same on both sides."""
    group.add_argument("--kernel", default=default_kernel,
                       help="the guest kernel: the test guest ELF, or a Linux bzImage "
                            "(default %(default)s)")
    group.add_argument("--initrd", default=None,
                       help="an initrd for --kernel (the Linux test VM's: "
                            "build/vmm/linuxguest/initrd.cpio.gz)")
    group.add_argument("--kernel-args", default="",
                       help="a Linux kernel's own arguments, put before '--' and the "
                            "workload's parameters, e.g. 'console=ttyS0 quiet'")


def boot_timeout(a, touched):
    """Time to the workload's 'ready': the test guest's stamping of what it
    touches, and a Linux kernel's boot before it (a minute or two in an
    emulated host)."""
    return 30 + 10 * touched / (1 << 30) + (120 if a.kernel_args else 0)


if __name__ == "__main__":
    sys.exit(main())
