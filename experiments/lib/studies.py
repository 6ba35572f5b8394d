#!/usr/bin/env python3
"""Clark et al.'s measurements, one command per study (experiments/studies.sh):

  dirty-rate  downtime and total time against the guest's dirty rate, for
              several working-set sizes
  mem-size    against guest memory size (1-16 GiB), idle and lightly dirtied
  bandwidth   against link bandwidth: the run's private network namespace
              with its loopback shaped by `tc` (tbf) to 1 and 10 Gbit/s, and
              unshaped
  rounds      the round-by-round picture of one migration: pages and bytes
              per round, dirty rate, throughput
  compare     plot of a compare.sh result (migvm against QEMU)
  check DIR.. is a study's output well-formed and consistent (CI)

Each writes to experiments/results/<study>-STAMP/ (or --out DIR):
results.jsonl (a record line: machine, commit, settings; then one line per
migration), <study>.csv (median, min, max per point), <study>.md (the record
and the table) and <study>.png (gnuplot). Every migration is checked for
consistency (check_run(): downtime below total time, per-round sums equal
the totals, bytes on the wire consistent with pages and compression); a
failed check fails the study. --quick runs one small point, for CI.

Each migration is experiments/migvm_migrate.sh (see README.md there for the
method: private network namespace, guest checked on the destination).
"""

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import migbench as mb  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = 4096
MIB = 1 << 20


class StudyError(Exception):
    pass


# ---------------------------------------------------------------------------
# One migration, and its consistency

def migrate(g, a, shape=None):
    """One migvm migration of guest `g` (mem, touch, wss, rate, fill,
    guest_args); returns its JSON result with `point` settings added."""
    argv = [os.path.join(HERE, "migvm_migrate.sh"), "--mode", a.mode,
            "--mem", str(g["mem"]), "--cpus", str(a.cpus), "--touch", g["touch"],
            "--wss", g["wss"], "--rate", str(g["rate"]), "--fill", g["fill"],
            "--downtime-ms", str(a.downtime_ms), "--settle", str(a.settle),
            "--timeout", str(a.timeout)]
    if g.get("guest_args"):
        argv += ["--guest-args", g["guest_args"]]
    if a.prealloc:
        argv.append("--dest-extra=--prealloc")
    if a.migvm:
        argv += ["--migvm", a.migvm]
    env = dict(os.environ)
    if shape:
        env["MIGBENCH_SHAPE"] = shape
    t = time.monotonic()
    r = mb.run_json(argv, env)
    r["wall_s"] = round(time.monotonic() - t, 1)
    return r


def check_run(r):
    """The ways a migration result can be inconsistent; [] when it is not."""
    bad = []
    if r.get("status") != "completed":
        return ["status %s: %s" % (r.get("status"), r.get("error", ""))]
    if r.get("guest_ok") is not True:
        bad.append("guest not ok on the destination: %s" % r.get("guest"))
    num = lambda k: r.get(k) if isinstance(r.get(k), (int, float)) else None
    tot, down, setup = num("total_time_ms"), num("downtime_ms"), num("setup_time_ms")
    if None in (tot, down, setup) or any(math.isnan(x) or math.isinf(x) for x in (tot, down, setup)):
        return bad + ["missing or non-finite times: total %s downtime %s setup %s" % (tot, down, setup)]
    if not 0 < down < tot:
        bad.append("downtime %.1f ms not within (0, total %.1f ms)" % (down, tot))
    if not 0 <= setup <= tot:
        bad.append("setup %.1f ms not within [0, total %.1f ms]" % (setup, tot))
    rounds = r.get("per_round") or []
    if r.get("rounds") != len(rounds) or not rounds:
        bad.append("rounds %s but %d per-round entries" % (r.get("rounds"), len(rounds)))
        return bad
    if [x.get("round") for x in rounds] != list(range(1, len(rounds) + 1)):
        bad.append("rounds not numbered 1..%d" % len(rounds))
    if sum(x["pages"] for x in rounds) != r.get("pages_sent"):
        bad.append("per-round pages sum to %d, pages_sent %s"
                   % (sum(x["pages"] for x in rounds), r.get("pages_sent")))
    if sum(x["zero_pages"] for x in rounds) != r.get("zero_pages"):
        bad.append("per-round zero pages sum to %d, zero_pages %s"
                   % (sum(x["zero_pages"] for x in rounds), r.get("zero_pages")))
    dur = sum(x["duration_ms"] for x in rounds)
    if dur > tot * 1.001:
        bad.append("rounds last %.1f ms, longer than the migration (%.1f ms)" % (dur, tot))
    for x in rounds:
        if x["duration_ms"] <= 0 or x["bytes"] < 0 or x["zero_pages"] > x["pages"]:
            bad.append("round %s: impossible figures %s" % (x.get("round"), x))
        elif x["bytes"] and abs(x["throughput"] - x["bytes"] / (x["duration_ms"] / 1e3)) > \
                0.02 * x["throughput"] + 1:
            bad.append("round %s: throughput %.0f B/s is not bytes/duration"
                       % (x["round"], x["throughput"]))
    mr = r.get("migvm_result") or {}
    own = num("bytes_on_wire_migvm") or mr.get("bytes_on_wire")
    pages_bytes = sum(x["bytes"] for x in rounds)
    if own is None or not pages_bytes <= own <= pages_bytes + 2 * MIB + own // 100:
        bad.append("bytes on the wire %s vs %d in page rounds: more than state and "
                   "messages can explain" % (own, pages_bytes))
    raw = mr.get("raw_bytes")
    if raw is not None and raw != r.get("pages_sent", 0) * PAGE:
        bad.append("raw_bytes %s is not pages_sent x 4096" % raw)
    ratio = num("compression_ratio") or mr.get("compression_ratio")
    if raw and own and ratio and abs(ratio - raw / own) > 0.01 * ratio + 0.01:
        bad.append("compression ratio %.3f but raw/wire = %.3f" % (ratio, raw / own))
    lo = num("wire_bytes_lo")
    if lo is not None and own and not own <= lo <= own * 1.2 + 2 * MIB:
        bad.append("loopback carried %d bytes for %d sent" % (lo, own))
    return bad


# ---------------------------------------------------------------------------
# Points, repetitions, outputs

FIELDS = ["total_time_ms", "downtime_ms", "setup_time_ms", "rounds", "bytes_on_wire",
          "pages_sent", "throughput_mbs"]


def derived(r):
    """Throughput of the page rounds (MB/s of wire bytes) for tables."""
    rounds = r.get("per_round") or []
    d = sum(x["duration_ms"] for x in rounds)
    if d > 0:
        r["throughput_mbs"] = sum(x["bytes"] for x in rounds) / (d / 1e3) / 1e6
    return r


def run_points(study, points, a, out):
    """points: [(label dict, guest dict, shape)] -> rows (label + results)."""
    rows, failures = [], []
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        for rep in range(1, a.reps + 1):
            for label, g, shape in points:
                r = derived(migrate(g, a, shape))
                r["point"], r["rep"], r["guest_def"] = label, rep, g
                bad = check_run(r)
                r["check"] = bad
                rows.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                print("%s: rep %d %s: %s total %s ms downtime %s ms (%.0f s)%s" % (
                    study, rep, " ".join("%s=%s" % kv for kv in label.items()),
                    r.get("status"), r.get("total_time_ms"), r.get("downtime_ms"),
                    r["wall_s"], ("  CHECK FAILED: " + "; ".join(bad)) if bad else ""),
                    file=sys.stderr)
                if bad:
                    failures.append((label, bad))
    return rows, failures


def sweep(study, points, keys, a, out):
    """Run the points; returns rows, failures, the summary per point and
    the PNG's path."""
    rows, fails = run_points(study, points, a, out)
    return rows, fails, table(rows, keys, FIELDS), os.path.join(out, study + ".png")


def table(rows, keys, fields):
    """Summary per point: [(label, summary)] in first-seen order."""
    groups = {}
    for r in rows:
        k = tuple(r["point"][x] for x in keys)
        groups.setdefault(k, []).append(r)
    return [(dict(zip(keys, k)), mb.summarize([r for r in v if not r["check"]], fields)
             | {"runs": len(v)}) for k, v in groups.items()]


def write_outputs(study, out, rec, keys, summary, fields, notes):
    cols = list(keys) + ["runs", "ok"]
    for f in fields:
        cols += [f, f + "_min", f + "_max"]
    with open(os.path.join(out, study + ".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for label, s in summary:
            row = [label[k] for k in keys] + [s["runs"], s["completed"]]
            for f in fields:
                v = s.get(f)
                row += [round(v["median"], 3), round(v["min"], 3), round(v["max"], 3)] \
                    if v else ["", "", ""]
            w.writerow(row)
    md = ["# %s" % study, "",
          "Machine: %s, %d CPUs, %d MiB, kernel %s, KVM %s; commit %s%s; load %.1f at start; "
          "%s UTC." % (rec["cpu"], rec["ncpu"], rec["mem_mib"], rec["kernel"], rec["kvm"],
                       rec["commit"][:10], " (uncommitted changes)" if rec["commit_dirty"] else "",
                       rec["loadavg"], rec["time_utc"]),
          "Settings: %s." % ", ".join("%s=%s" % (k, v) for k, v in sorted(rec["settings"].items())
                                      if k not in ("quick",)),
          "Cells: median (min-max) over the repetitions that completed and passed the checks.",
          ""]
    head = list(keys) + ["ok/runs", "total ms", "downtime ms", "setup ms", "rounds",
                         "MB on wire", "MB/s (rounds)"]
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "---|" * len(head))

    def cell(s, f, scale=1.0, digits=0):
        v = s.get(f)
        if not v:
            return "-"
        m = lambda x: "%.*f" % (digits, x / scale)
        return m(v["median"]) if v["n"] == 1 else "%s (%s-%s)" % (m(v["median"]), m(v["min"]), m(v["max"]))
    for label, s in summary:
        md.append("| " + " | ".join([str(label[k]) for k in keys] + [
            "%d/%d" % (s["completed"], s["runs"]), cell(s, "total_time_ms"),
            cell(s, "downtime_ms", digits=1), cell(s, "setup_time_ms", digits=1),
            cell(s, "rounds"), cell(s, "bytes_on_wire", 1e6, 1),
            cell(s, "throughput_mbs")]) + " |")
    md += [""] + notes
    with open(os.path.join(out, study + ".md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    return "\n".join(md)


# ---------------------------------------------------------------------------
# gnuplot

def gnuplot(script, out_png):
    if not shutil.which("gnuplot"):
        raise StudyError("gnuplot is not installed (scripts/setup.sh installs gnuplot-nox)")
    p = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(out_png):
        raise StudyError("gnuplot failed: %s" % p.stderr.strip()[-500:])
    with open(out_png, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            raise StudyError("gnuplot wrote no PNG to %s" % out_png)


def term(png, w=1000, h=420):
    return ('set terminal pngcairo size %d,%d font "sans,10"\nset output "%s"\n'
            'set grid\nset key top left\n' % (w, h, png))


def dat(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(" ".join('"%s"' % x if isinstance(x, str) else repr(x) for x in row) + "\n")


def med(s, f):
    return s[f]["median"] if s.get(f) else float("nan")


def lo_hi(s, f):
    return (s[f]["min"], s[f]["max"]) if s.get(f) else (float("nan"), float("nan"))


# ---------------------------------------------------------------------------
# The studies

def pages_per_s(mib_s):
    return int(mib_s * MIB / PAGE)


def study_dirty_rate(a, out):
    wss = ["16M", "64M", "256M"] if not a.quick else ["16M"]
    rates = [("16", 16), ("64", 64), ("256", 256), ("1024", 1024), ("max", None)]
    if a.quick:
        rates = [("64", 64)]
    mem, touch = (512, "128M") if a.quick else (1024, "512M")
    points = []
    for w in wss:
        for name, mibs in rates:
            g = dict(mem=mem, touch=touch, wss=w, rate="max" if mibs is None else pages_per_s(mibs),
                     fill=a.fill)
            points.append(({"wss": w, "rate_mib_s": name}, g, None))
    keys = ["wss", "rate_mib_s"]
    rows, fails, summary, png = sweep("dirty-rate", points, keys, a, out)
    plots = []
    for i, w in enumerate(wss):
        d = os.path.join(out, "dirty-rate-%s.dat" % w)
        dat(d, [(lab["rate_mib_s"], med(s, "downtime_ms"), *lo_hi(s, "downtime_ms"),
                 med(s, "total_time_ms"), *lo_hi(s, "total_time_ms"))
                for lab, s in summary if lab["wss"] == w])
        plots.append((d, w, i))
    gnuplot(term(png) + "set multiplot layout 1,2 title \"migvm: cost against the guest's "
            "dirty rate (%d MiB guest, %s touched, fill=%s)\"\n" % (mem, touch, a.fill)
            + "set xlabel 'rewrite rate (MiB/s; max = as fast as 2 vCPUs can)'\n"
            "set ylabel 'downtime (ms)'\nset logscale y\nset yrange [*:*]\n"
            "plot " + ", ".join("'%s' using 0:2:3:4:xtic(1) with yerrorlines title 'wss %s'"
                                % (d, w) for d, w, _ in plots) + "\n"
            "set ylabel 'total migration time (ms)'\nunset logscale y\nset yrange [0:*]\n"
            "plot " + ", ".join("'%s' using 0:5:6:7:xtic(1) with yerrorlines title 'wss %s'"
                                % (d, w) for d, w, _ in plots) + "\nunset multiplot\n", png)
    notes = ["Guest: %d MiB, 2 vCPUs, %s touched, rewriting a working set (wss) at a set "
             "rate (`rate=` pages/s for the whole guest; `max` = as fast as it can); "
             "downtime target %d ms." % (mem, touch, a.downtime_ms)]
    return keys, summary, notes, fails


def study_mem_size(a, out):
    sizes = [1, 2, 4, 8, 16] if not a.quick else [1]
    kinds = [("idle", lambda m: dict(touch="0", wss="0", rate=0, guest_args="idle=halt")),
             ("light", lambda m: dict(touch="%dM" % (m * 1024 // 8), wss="16M",
                                      rate=pages_per_s(64)))]
    points = []
    for m in sizes:
        for kind, fn in kinds:
            g = dict(fn(m), mem=m * 1024, fill=a.fill)
            points.append(({"mem_gib": m, "load": kind}, g, None))
    keys = ["mem_gib", "load"]
    rows, fails, summary, png = sweep("mem-size", points, keys, a, out)
    ds = []
    for kind, _ in kinds:
        d = os.path.join(out, "mem-size-%s.dat" % kind)
        dat(d, [(lab["mem_gib"], med(s, "total_time_ms"), *lo_hi(s, "total_time_ms"),
                 med(s, "downtime_ms"), *lo_hi(s, "downtime_ms"), med(s, "bytes_on_wire") / 1e6)
                for lab, s in summary if lab["load"] == kind])
        ds.append((d, kind))
    gnuplot(term(png) + "set multiplot layout 1,2 title \"migvm: cost against guest memory "
            "size (idle; light = 1/8 touched, 16 MiB rewritten at 64 MiB/s)\"\n"
            "set xlabel 'guest memory (GiB)'\nset logscale x 2\nset ylabel 'total migration time (ms)'\n"
            "plot " + ", ".join("'%s' using 1:2:3:4 with yerrorlines title '%s'" % (d, k)
                                for d, k in ds) + "\n"
            "set ylabel 'downtime (ms)'\n"
            "plot " + ", ".join("'%s' using 1:5:6:7 with yerrorlines title '%s'" % (d, k)
                                for d, k in ds) + "\nunset multiplot\n", png)
    notes = ["idle: the test guest halted after boot (`touch=0 idle=halt`); light: 1/8 of its "
             "memory touched, a 16 MiB working set rewritten at 64 MiB/s."]
    return keys, summary, notes, fails


def tbf(rate_bits):
    """tc arguments shaping to rate_bits/s: a burst of 10 ms of traffic
    (at least 1 MiB) so that a tick's worth always fits."""
    burst = max(MIB, rate_bits // 8 // 100)
    return "rate %dbit burst %d latency 200ms" % (rate_bits, burst)


def study_bandwidth(a, out):
    links = [("1gbit", 10**9), ("10gbit", 10**10), ("unshaped", None)]
    fills = [a.fill] if a.quick else ["random", "sparse"]
    if a.quick:
        links = [("1gbit", 10**9)]
    mem, touch, wss = (512, "64M", "16M") if a.quick else (1024, "512M", "64M")
    points = []
    for name, bits in links:
        for fill in fills:
            g = dict(mem=mem, touch=touch, wss=wss, rate=pages_per_s(32), fill=fill)
            points.append(({"link": name, "fill": fill}, g, tbf(bits) if bits else None))
    if os.geteuid() != 0:
        raise StudyError("the bandwidth study shapes a private network namespace with tc: run as root")
    rows, fails = run_points("bandwidth", points, a, out)
    keys = ["link", "fill"]
    # the shaped runs must not have carried more than their link allows
    for r in rows:
        bits = dict(links).get(r["point"]["link"])
        if bits and not r["check"] and r.get("throughput_mbs"):
            if r["throughput_mbs"] * 8e6 > bits * 1.1:
                msg = "%.0f MB/s over a %s link" % (r["throughput_mbs"], r["point"]["link"])
                r["check"].append(msg)
                fails.append((r["point"], [msg]))
    summary = table(rows, keys, FIELDS)
    png = os.path.join(out, "bandwidth.png")
    ds = []
    for fill in fills:
        d = os.path.join(out, "bandwidth-%s.dat" % fill)
        dat(d, [(lab["link"], med(s, "total_time_ms"), *lo_hi(s, "total_time_ms"),
                 med(s, "downtime_ms"), *lo_hi(s, "downtime_ms"), med(s, "throughput_mbs") * 8 / 1e3)
                for lab, s in summary if lab["fill"] == fill])
        ds.append((d, fill))
    gnuplot(term(png, 1200) + "set multiplot layout 1,3 title \"migvm: cost against link "
            "bandwidth (tc tbf on the run's loopback; %d MiB guest, %s touched, %s rewritten "
            "at 32 MiB/s)\"\n" % (mem, touch, wss)
            + "set style data histograms\nset style histogram errorbars gap 1 lw 1\n"
            "set style fill solid 0.6 border -1\nset yrange [0:*]\n"
            "set ylabel 'total migration time (ms)'\n"
            "plot " + ", ".join("'%s' using 2:3:4:xtic(1) title 'fill=%s'" % (d, f) for d, f in ds) + "\n"
            "set ylabel 'downtime (ms)'\n"
            "plot " + ", ".join("'%s' using 5:6:7:xtic(1) title 'fill=%s'" % (d, f) for d, f in ds) + "\n"
            "set style histogram clustered\nset ylabel 'wire throughput of the rounds (Gbit/s)'\n"
            "plot " + ", ".join("'%s' using 8:xtic(1) title 'fill=%s'" % (d, f) for d, f in ds)
            + "\nunset multiplot\n", png)
    notes = ["Each run is in a network namespace of its own; `tc qdisc add dev lo root tbf %s` "
             "(for 1 Gbit/s) shapes its loopback, which carries the migration both ways. The "
             "rounds' wire throughput is checked against the link." % tbf(10**9)]
    return keys, summary, notes, fails


def study_rounds(a, out):
    mem, touch, wss = (512, "128M", "32M") if a.quick else (1024, "512M", a.wss)
    g = dict(mem=mem, touch=touch, wss=wss, rate=a.rate, fill=a.fill)
    shape = tbf(a.link_mbit * 10**6) if a.link_mbit else None
    keys = ["wss", "rate"]
    rows, fails, summary, png = sweep("rounds", [({"wss": wss, "rate": a.rate}, g, shape)],
                                      keys, a, out)
    # the run of median total time is the one drawn
    good = sorted((r for r in rows if not r["check"]), key=lambda r: r["total_time_ms"])
    best = good[(len(good) - 1) // 2] if good else None
    if best is None:
        raise StudyError("no migration completed: %s" % "; ".join(
            "; ".join(b) for _, b in fails))
    d = os.path.join(out, "rounds.dat")
    dat(d, [(x["round"], x["pages"], x["zero_pages"], x["bytes"] / 1e6,
             x["dirty_rate"] * PAGE / 1e6, x["throughput"] / 1e6, x["duration_ms"])
            for x in best["per_round"]])
    rnds = len(best["per_round"])
    gnuplot(term(png, 1100, 700) + "set multiplot layout 2,2 title \"one migration, round by "
            "round: %d MiB guest, %s touched, %s rewritten at rate=%s, fill=%s%s; downtime "
            "%.1f ms, total %.0f ms\"\n" % (mem, touch, wss, a.rate, a.fill,
                                            ", %d Mbit/s link" % a.link_mbit if a.link_mbit else "",
                                            best["downtime_ms"], best["total_time_ms"])
            + "set style fill solid 0.6 border -1\nset boxwidth 0.6\nset xrange [0.4:%f]\n"
            "set xtics 1\nset xlabel 'round (the last one is stop-and-copy)'\nset yrange [0:*]\n"
            "set ylabel 'pages sent'\nplot '%s' using 1:2 with boxes title 'pages', '' using 1:3 "
            "with boxes title 'zero pages'\n"
            "set ylabel 'MB on the wire'\nplot '%s' using 1:4 with boxes notitle\n"
            "set ylabel 'dirty rate (MB/s)'\nplot '%s' using 1:5 with linespoints notitle\n"
            "set ylabel 'throughput (MB/s on the wire)'\nplot '%s' using 1:6 with linespoints "
            "notitle\nunset multiplot\n" % (rnds + 0.6, d, d, d, d), png)
    notes = ["Per round, from the migration's own stats (`per_round`): pages sent (zero pages "
             "among them), bytes on the wire, the rate at which the guest dirtied pages while "
             "the round ran, and the round's wire throughput.", "",
             "| round | pages | zero pages | MB on wire | dirty rate MB/s | throughput MB/s | ms |",
             "|---|---|---|---|---|---|---|"]
    for x in best["per_round"]:
        notes.append("| %d | %d | %d | %.2f | %.0f | %.0f | %.1f |" % (
            x["round"], x["pages"], x["zero_pages"], x["bytes"] / 1e6,
            x["dirty_rate"] * PAGE / 1e6, x["throughput"] / 1e6, x["duration_ms"]))
    return keys, summary, notes, fails


def plot_compare(a):
    """studies.sh compare --csv FILE [--png OUT]"""
    if not a.csv or not os.path.exists(a.csv):
        raise StudyError("compare: --csv FILE (a compare.sh result) is needed")
    png = a.png or os.path.splitext(a.csv)[0] + ".png"
    gnuplot_compare(a.csv, png)
    print(png)
    return 0


def gnuplot_compare(src, png):
    """PNG of a compare.sh CSV: migvm / QEMU ratios per case."""
    rows = list(csv.DictReader(open(src)))
    if not rows:
        raise StudyError("%s has no rows" % src)
    d = os.path.splitext(png)[0] + ".dat"
    fnum = lambda v: float(v) if v not in ("", None) else float("nan")
    dat(d, [("%s %s" % (r["case"], r["fill"]), fnum(r["total_ratio"]), fnum(r["downtime_ratio"]))
            for r in rows])
    gnuplot(term(png, 1000, 420) + "set title \"migvm / QEMU's best mode, same guest and run "
            "(below 1: migvm better; targets: total <= 1, downtime <= 0.5)\"\n"
            "set style data histograms\nset style histogram clustered gap 1\n"
            "set style fill solid 0.6 border -1\nset yrange [0:*]\nset xtics rotate by -20\n"
            "set ylabel 'ratio'\nset key top right\n"
            "plot '%s' using 2:xtic(1) title 'total time', '' using 3 title 'downtime', "
            "1 with lines lt 0 lw 2 notitle, 0.5 with lines dt 2 lw 2 notitle\n" % d, png)


def check_dir(out):
    """Is a study's output directory well-formed and consistent? Returns the
    problems found ([] when none): the record, every run, the CSV, the
    markdown table and the PNG."""
    bad = []
    try:
        lines = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
    except (OSError, ValueError) as e:
        return ["results.jsonl: %s" % e]
    if not lines or "record" not in lines[0]:
        return ["results.jsonl: no record line first"]
    rec = lines[0]["record"]
    for k in ("commit", "cpu", "ncpu", "kernel", "kvm", "settings", "time_utc"):
        if not rec.get(k) and rec.get(k) != 0:
            bad.append("record: no %s" % k)
    study = (rec.get("settings") or {}).get("study")
    if study not in STUDIES:
        return bad + ["record: unknown study %r" % study]
    runs = lines[1:]
    if not runs:
        bad.append("results.jsonl: no migrations")
    for r in runs:
        for b in check_run(r):
            bad.append("run %s rep %s: %s" % (r.get("point"), r.get("rep"), b))
    try:
        rows = list(csv.DictReader(open(os.path.join(out, study + ".csv"))))
    except OSError as e:
        return bad + ["%s.csv: %s" % (study, e)]
    need = ["runs", "ok"] + [f + x for f in ("total_time_ms", "downtime_ms", "rounds")
                             for x in ("", "_min", "_max")]
    if not rows:
        bad.append("%s.csv: no rows" % study)
    for i, row in enumerate(rows, 2):
        missing = [c for c in need if c not in row]
        if missing:
            bad.append("%s.csv line %d: no column %s" % (study, i, ", ".join(missing)))
            continue
        try:
            v = {c: float(row[c]) for c in need}
        except ValueError:
            bad.append("%s.csv line %d: not a number in %s" % (study, i, row))
            continue
        if any(math.isnan(x) or math.isinf(x) for x in v.values()):
            bad.append("%s.csv line %d: non-finite value" % (study, i))
        elif not (0 < v["downtime_ms"] < v["total_time_ms"]):
            bad.append("%s.csv line %d: downtime %s not below total %s"
                       % (study, i, v["downtime_ms"], v["total_time_ms"]))
        elif not all(v[f + "_min"] <= v[f] <= v[f + "_max"]
                     for f in ("total_time_ms", "downtime_ms", "rounds")):
            bad.append("%s.csv line %d: a median outside its min-max" % (study, i))
        elif not 1 <= v["ok"] <= v["runs"] or v["rounds"] < 1:
            bad.append("%s.csv line %d: ok %s of %s runs, %s rounds"
                       % (study, i, v["ok"], v["runs"], v["rounds"]))
    total_runs = sum(int(float(r.get("runs") or 0)) for r in rows)
    if rows and total_runs != len(runs):
        bad.append("%s.csv counts %d runs, results.jsonl has %d" % (study, total_runs, len(runs)))
    try:
        md = open(os.path.join(out, study + ".md")).read()
        table_rows = [l for l in md.splitlines() if l.startswith("| ")]
        if len(table_rows) < len(rows) + 1 or (rec.get("commit") or "?")[:10] not in md:
            bad.append("%s.md: the table or the record is missing" % study)
    except OSError as e:
        bad.append("%s.md: %s" % (study, e))
    try:
        with open(os.path.join(out, study + ".png"), "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                bad.append("%s.png is not a PNG" % study)
    except OSError as e:
        bad.append("%s.png: %s" % (study, e))
    return bad


STUDIES = {"dirty-rate": study_dirty_rate, "mem-size": study_mem_size,
           "bandwidth": study_bandwidth, "rounds": study_rounds}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="studies.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=sorted(STUDIES) + ["compare", "check"])
    ap.add_argument("dirs", nargs="*", help="check: study output directories")
    ap.add_argument("--quick", action="store_true", help="one small point (for CI)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--out", default=None, help="output directory (default experiments/results/STUDY-STAMP)")
    ap.add_argument("--mode", default="default", help="migvm_migrate.sh --mode (default %(default)s)")
    ap.add_argument("--fill", default="random", choices=["random", "text", "sparse"])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--downtime-ms", type=int, default=300)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--timeout", type=int, default=180, help="per migration, s")
    ap.add_argument("--prealloc", action="store_true", help="destination RAM preallocated")
    ap.add_argument("--wss", default="256M", help="rounds: working set (default %(default)s)")
    ap.add_argument("--rate", default="max", help="rounds: guest rate= (default %(default)s)")
    ap.add_argument("--link-mbit", type=int, default=1000,
                    help="rounds: shape the link to this many Mbit/s, 0 = unshaped "
                    "(default %(default)s, the paper's gigabit)")
    ap.add_argument("--migvm", default=None, help="the migvm binary (default build/vmm/migvm)")
    ap.add_argument("--csv", help="compare: the compare.sh CSV to plot")
    ap.add_argument("--png", help="compare: where to write the plot")
    a = ap.parse_args(argv)
    if a.study == "check":
        if not a.dirs:
            ap.error("check needs one or more study output directories")
        rc = 0
        for d in a.dirs:
            bad = check_dir(d)
            print("%s: %s" % (d, "ok" if not bad else "%d problem(s)\n  %s"
                              % (len(bad), "\n  ".join(bad))))
            rc |= 1 if bad else 0
        return rc
    if a.dirs:
        ap.error("unexpected arguments: %s" % " ".join(a.dirs))
    if a.study == "compare":
        try:
            return plot_compare(a)
        except StudyError as e:
            print("studies: %s" % e, file=sys.stderr)
            return 1
    if a.reps is None:
        a.reps = 1 if a.quick else 3
    if a.reps < 1:
        ap.error("--reps must be at least 1")
    out = a.out or os.path.join(HERE, "results", "%s-%s" % (a.study, time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "csv", "png")}
    rec = mb.record(settings)
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        f.write(json.dumps({"record": rec}) + "\n")
    try:
        keys, summary, notes, fails = STUDIES[a.study](a, out)
        md = write_outputs(a.study, out, rec, keys, summary, FIELDS, notes)
    except StudyError as e:
        print("studies: %s: %s" % (a.study, e), file=sys.stderr)
        return 1
    print(md)
    print("\nresults in %s" % out)
    if fails:
        print("studies: %s: %d migration(s) failed or were inconsistent:\n  %s" % (
            a.study, len(fails), "\n  ".join("%s: %s" % (l, "; ".join(b)) for l, b in fails)),
            file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
