#!/usr/bin/env python3
"""migvm against QEMU on the same test guest, workload and loopback link, in
the same run: for each case, R repetitions, migvm and QEMU interleaved
(rep 1: migvm, QEMU mode A, QEMU mode B; rep 2: ...). QEMU's figure for a
case is its best mode there (lowest median total time to resume).

Writes experiments/results/compare-STAMP.jsonl (one line per migration, plus
a first line with the record: machine, commit, settings), a CSV of the
summary, a markdown table (also printed on stdout) and a PNG of the ratios.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import migbench as mb  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDLE = {"touch": "0", "wss": "0", "rate": "0", "guest_args": "idle=halt"}

# name -> guest options; QEMU candidate modes per fill
CASES = {
    "idle-1G": dict(IDLE, mem=1024),
    "idle-4G": dict(IDLE, mem=4096),
    "wss64M": dict(mem=1024, touch="512M", wss="64M", rate="max", guest_args=""),
    "wss256M": dict(mem=1024, touch="512M", wss="256M", rate="max", guest_args=""),
}
QEMU_MODES = {
    ("idle", "random"): ["plain", "multifd"],
    ("idle", "sparse"): ["plain", "multifd"],
    ("dirty", "random"): ["plain", "xbzrle"],
    ("dirty", "sparse"): ["plain", "multifd-zstd"],
}
FIELDS = ["total_time_to_resume_ms", "downtime_stop_to_resume_ms", "total_time_ms",
          "downtime_ms", "rounds", "bytes_on_wire"]


def run_one(tool, mode, case, g, a):
    script = os.path.join(HERE, "%s_migrate.sh" % tool)
    argv = [script, "--mode", mode, "--mem", str(g["mem"]), "--cpus", str(a.cpus),
            "--touch", g["touch"], "--wss", g["wss"], "--rate", g["rate"],
            "--fill", g["fill"], "--downtime-ms", str(a.downtime_ms),
            "--settle", str(a.settle)]
    if g["guest_args"]:
        argv += ["--guest-args", g["guest_args"]]
    # Another build's binaries (a test's), else build/ beside the scripts.
    if tool == "migvm" and a.migvm:
        argv += ["--migvm", a.migvm]
    if a.kernel and (tool == "qemu" or a.linux):
        argv += ["--kernel", a.kernel]
    if a.linux:
        argv += ["--initrd", a.initrd, "--kernel-args",
                 a.kernel_args[tool] if isinstance(a.kernel_args, dict) else a.kernel_args]
    if a.timeout:
        argv += ["--timeout", str(a.timeout)]
    if a.prealloc:
        # the destination's RAM backed before the migration, on both sides
        argv.append("--dest-extra=" + ("--prealloc" if tool == "migvm" else "-mem-prealloc"))
    t = time.monotonic()
    r = mb.run_json(argv)
    r.setdefault("tool", tool)
    r.setdefault("mode", mode)
    r["case"] = case
    r["fill"] = g["fill"]
    r["wall_s"] = round(time.monotonic() - t, 1)
    return r


def fmt(s, f, scale=1.0, digits=0):
    if f not in s:
        return "-"
    v = s[f]
    m = lambda x: ("%.*f" % (digits, x / scale))
    if v["n"] == 1:
        return m(v["median"])
    return "%s (%s-%s)" % (m(v["median"]), m(v["min"]), m(v["max"]))


def mbs(v):
    if v is None:
        return "-"
    return ("%.0f" if v >= 10e6 else "%.2g") % (v / 1e6)


def ratio(a, b):
    return ("%.2f" % (a / b)) if a is not None and b else "-"


def report(rows, out_base):
    """Markdown table + CSV from result rows; returns the markdown."""
    cases = []
    for r in rows:
        key = (r["case"], r["fill"])
        if key not in cases:
            cases.append(key)
    md = ["| case | fill | migvm total ms | migvm downtime ms | QEMU best mode | QEMU total ms "
          "| QEMU downtime ms | total ratio | downtime ratio | MB on wire migvm / QEMU "
          "| ok migvm / QEMU |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    csv_rows = []
    for case, fill in cases:
        mine = [r for r in rows if (r["case"], r["fill"]) == (case, fill) and r["tool"] == "migvm"]
        q = [r for r in rows if (r["case"], r["fill"]) == (case, fill) and r["tool"] == "qemu"]
        sm = mb.summarize(mine, FIELDS)
        by = mb.summarize_by(q, "mode", FIELDS)
        cand = [(s["total_time_to_resume_ms"]["median"], m) for m, s in by.items()
                if "total_time_to_resume_ms" in s]
        best = min(cand)[1] if cand else None
        sq = by.get(best, {"runs": len(q), "completed": 0})
        med = lambda s, f: s[f]["median"] if f in s else None
        mt, md_ = med(sm, "total_time_to_resume_ms"), med(sm, "downtime_stop_to_resume_ms")
        qt, qd = med(sq, "total_time_to_resume_ms"), med(sq, "downtime_stop_to_resume_ms")
        mw, qw = med(sm, "bytes_on_wire"), med(sq, "bytes_on_wire")
        qok = sum(s["completed"] for s in by.values())
        md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %d/%d / %d/%d |" % (
            case, fill, fmt(sm, "total_time_to_resume_ms"), fmt(sm, "downtime_stop_to_resume_ms", digits=1),
            best or "-", fmt(sq, "total_time_to_resume_ms"), fmt(sq, "downtime_stop_to_resume_ms", digits=1),
            ratio(mt, qt), ratio(md_, qd),
            mbs(mw), mbs(qw),
            sm["completed"], sm["runs"], qok, len(q)))
        csv_rows.append({
            "case": case, "fill": fill, "qemu_best_mode": best,
            "migvm_runs": sm["runs"], "migvm_ok": sm["completed"],
            "qemu_runs": len(q), "qemu_ok": qok,
            "migvm_total_ms": mt, "migvm_downtime_ms": md_,
            "migvm_total_min": sm.get("total_time_to_resume_ms", {}).get("min"),
            "migvm_total_max": sm.get("total_time_to_resume_ms", {}).get("max"),
            "migvm_downtime_min": sm.get("downtime_stop_to_resume_ms", {}).get("min"),
            "migvm_downtime_max": sm.get("downtime_stop_to_resume_ms", {}).get("max"),
            "qemu_total_ms": qt, "qemu_downtime_ms": qd,
            "qemu_own_downtime_ms": med(sq, "downtime_ms"),
            "total_ratio": round(mt / qt, 3) if mt is not None and qt else None,
            "downtime_ratio": round(md_ / qd, 3) if md_ is not None and qd else None,
            "migvm_bytes_on_wire": mw, "qemu_bytes_on_wire": qw,
            "migvm_rounds": med(sm, "rounds"), "qemu_rounds": med(sq, "rounds"),
            "qemu_modes": {m: {"total": s.get("total_time_to_resume_ms", {}).get("median"),
                               "downtime": s.get("downtime_stop_to_resume_ms", {}).get("median"),
                               "ok": "%d/%d" % (s["completed"], s["runs"])}
                           for m, s in by.items()},
        })
    if out_base:
        with open(out_base + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(csv_rows[0].keys()) if csv_rows else ["case"])
            w.writeheader()
            for r in csv_rows:
                r = dict(r, qemu_modes=json.dumps(r["qemu_modes"]))
                w.writerow(r)
        with open(out_base + ".md", "w") as f:
            f.write("\n".join(md) + "\n")
    return "\n".join(md)


def linux_vm(a):
    """--linux: the same kernel, initramfs and workload under both VMMs."""
    root = os.path.dirname(HERE)
    cache = subprocess.run(["bash", os.path.join(root, "tests", "nested", "nested"), "cache"],
                           capture_output=True, text=True, check=True).stdout.strip()
    a.kernel = os.path.join(cache, "vmlinuz")
    build = os.path.dirname(os.path.dirname(a.migvm)) if a.migvm else os.path.join(root, "build")
    a.initrd = os.path.join(build, "vmm", "linuxguest", "initrd.cpio.gz")
    for what, path in (("kernel", a.kernel), ("initramfs", a.initrd)):
        if not os.path.isfile(path):
            sys.exit("compare: no Linux %s at %s: scripts/setup.sh, then build the target "
                     "linuxguest" % (what, path))
    # The same arguments on both: each gives ACPI tables, neither has PCI.
    # QEMU's emulated SVM (a nested host) lets XSETBV through: no XSAVE there.
    args = "console=ttyS0 quiet pci=off"
    if os.environ.get("MIG_IN_NESTED"):
        args += " clearcpuid=xsave"
    a.kernel_args = {"migvm": args, "qemu": args}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="compare.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 rep of one small case")
    ap.add_argument("--cases", default="idle-1G,idle-4G,wss64M,wss256M",
                    help="comma-separated of %s" % ",".join(CASES))
    ap.add_argument("--fills", default="random,sparse")
    ap.add_argument("--migvm-modes", default="default",
                    help="migvm modes to run (the first is the one compared)")
    ap.add_argument("--qemu-modes", default=None,
                    help="override QEMU's candidate modes (comma-separated)")
    ap.add_argument("--migvm", default=None, help="the migvm binary (default build/vmm/migvm)")
    ap.add_argument("--kernel", default=None,
                    help="the test guest ELF for QEMU (default build/vmm/testguest/testguest.elf)")
    ap.add_argument("--linux", action="store_true",
                    help="the Linux test VM instead of the test guest, on both sides: Debian's "
                    "bzImage from the nested host's cache and build/vmm/linuxguest's initramfs")
    ap.add_argument("--touch", default=None, help="override the dirtying cases' guest touch=")
    ap.add_argument("--wss", default=None, help="override the dirtying cases' guest wss=")
    ap.add_argument("--rate", default=None,
                    help="override the dirtying cases' guest rate= (pages/s; a slow machine "
                    "such as a nested host needs one that QEMU's pre-copy can follow)")
    ap.add_argument("--timeout", type=int, default=None,
                    help="each migration's time limit, s (the tools' default: 120)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--downtime-ms", type=int, default=300)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--prealloc", action="store_true",
                    help="preallocate the destination's RAM on both sides "
                    "(migvm --prealloc, QEMU -mem-prealloc)")
    ap.add_argument("--out", default=None, help="output base (default experiments/results/compare-STAMP)")
    ap.add_argument("--report", nargs="*", default=None,
                    help="only print the table from these JSONL files")
    a = ap.parse_args(argv)

    if a.report is not None:
        rows = [r for r in mb._read_jsonl(a.report) if "case" in r]
        print(report(rows, a.out))
        return 0
    if a.linux:
        linux_vm(a)
    if a.quick:
        a.reps, a.cases, a.fills = 1, "wss64M", "random"
        CASES["wss64M"] = dict(CASES["wss64M"], mem=512, touch="128M", wss="32M")
    for c in a.cases.split(","):
        if c not in CASES:
            ap.error("unknown case %r (one of %s)" % (c, ",".join(CASES)))
        for k in ("touch", "wss", "rate"):
            if getattr(a, k) is not None and not c.startswith("idle"):
                CASES[c] = dict(CASES[c], **{k: getattr(a, k)})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(HERE, "results", "compare-" + stamp)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    settings = {k: v for k, v in vars(a).items() if k not in ("report", "out")}
    settings["case_defs"] = {c: CASES[c] for c in a.cases.split(",")}
    rec = mb.record(settings, tools={"qemu": ["qemu-system-x86_64", "--version"]})
    rows = []
    with open(out + ".jsonl", "w") as f:
        f.write(json.dumps({"record": rec}) + "\n")
        for rep in range(1, a.reps + 1):
            for case in a.cases.split(","):
                for fill in a.fills.split(","):
                    g = dict(CASES[case], fill=fill)
                    kind = "idle" if case.startswith("idle") else "dirty"
                    qmodes = a.qemu_modes.split(",") if a.qemu_modes else QEMU_MODES[(kind, fill)]
                    runs = [("migvm", m) for m in a.migvm_modes.split(",")] + \
                        [("qemu", m) for m in qmodes]
                    # Rotate the order every repetition: on this host a run's
                    # cost depends on what ran just before it (memory the
                    # previous run freed may still be backed by the outer
                    # host), so no tool keeps the same place.
                    k = (rep - 1) % len(runs)
                    runs = runs[k:] + runs[:k]
                    for tool, mode in runs:
                        r = run_one(tool, mode, case, g, a)
                        r["rep"] = rep
                        if tool == "migvm" and mode != a.migvm_modes.split(",")[0]:
                            r["tool"] = "migvm-" + mode     # kept, not compared
                        rows.append(r)
                        f.write(json.dumps(r) + "\n")
                        f.flush()
                        print("compare: rep %d %s fill=%s %s %s: %s total %s ms downtime %s ms "
                              "guest_ok %s (%.0f s)%s" % (
                                  rep, case, fill, tool, mode, r.get("status"),
                                  r.get("total_time_to_resume_ms"),
                                  r.get("downtime_stop_to_resume_ms"), r.get("guest_ok"),
                                  r["wall_s"], "  " + str(r.get("error"))[:200]
                                  if r.get("error") else ""), file=sys.stderr)
    md = report(rows, out)
    try:
        import studies  # the plot: ratios per case (gnuplot)
        studies.gnuplot_compare(out + ".csv", out + ".png")
    except studies.StudyError as e:
        print("compare: no plot: %s" % e, file=sys.stderr)
        return 1
    print("machine: %s, %d cpus, kvm=%s, kernel %s; commit %s%s; load %.1f at start; %s" % (
        rec["cpu"], rec["ncpu"], rec["kvm"], rec["kernel"], rec["commit"][:10],
        " (dirty tree)" if rec["commit_dirty"] else "", rec["loadavg"],
        rec.get("tools", {}).get("qemu", "")))
    print("reps %d; results in %s.{jsonl,csv,md}\n" % (a.reps, out))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
