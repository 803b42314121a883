#!/usr/bin/env python3
"""Turn the raw JSON of scripts/bench.sh (target/bench/) into one markdown table: median, p99,
the baseline measured in the same run, the ratio, and the goal from the benchmark issue."""
import json
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

only = None
if sys.argv[1] == "--only":  # --only egress DIR: row 7 alone (BENCH_ONLY=7)
    only, sys.argv[1:] = sys.argv[2], sys.argv[3:]
d = Path(sys.argv[1])


def load(name):
    return json.loads((d / name).read_text())


def pct(xs, q):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * q)]


def ms(us):
    return f"{us / 1000:.2f} ms"


def egress_row():
    # Baseline: the same curl in the same cell, direct from a server on the cell's own loopback
    # (alternating with the proxied runs); curl on the host, direct, is shown for context.
    eg = load("egress.json")
    mib = eg["bytes"] / 1048576
    eg_direct, eg_proxy = statistics.median(eg["direct_s"]), statistics.median(eg["proxy_s"])
    host = f"; host curl {statistics.median(eg['host_direct_s']):.3f} s" if eg.get("host_direct_s") else ""
    load_avg = eg.get("uptime", "").partition("load average:")[2].strip()
    return (f"download {mib:.0f} MiB through the egress proxy (curl in a cell, CONNECT)",
            f"{mib / eg_proxy:.0f} MiB/s ({eg_proxy:.3f} s)", f"max {max(eg['proxy_s']):.3f} s",
            f"same cell, direct: {mib / eg_direct:.0f} MiB/s ({eg_direct:.3f} s){host}",
            f"{(eg_proxy / eg_direct - 1) * 100:+.1f} % time{paired(eg['direct_s'], eg['proxy_s'])}"
            + (f" (load {load_avg})" if load_avg else ""), "≤ +5 %")


def paired(direct, proxy):
    # The runs alternate: each proxied run against the direct run just before it shows the
    # spread this machine's drift leaves in the ratio (its middle half).
    r = sorted(p / d - 1 for d, p in zip(direct, proxy))
    if len(r) < 4:
        return ""
    return f"; run by run {statistics.median(r) * 100:+.0f} %, middle half {pct(r, 0.25) * 100:+.0f}…{pct(r, 0.75) * 100:+.0f} %"


def egress_rate_row():
    # The same pair at 100 MB/s (curl --limit-rate on both): a fast network link, not loopback.
    eg = load("egress.json")
    if not eg.get("proxy_rate_s"):
        return None
    mib = eg["bytes"] / 1048576
    d, p = statistics.median(eg["direct_rate_s"]), statistics.median(eg["proxy_rate_s"])
    return (f"the same at 100 MB/s (`curl --limit-rate 100M` on both)",
            f"{mib / p:.0f} MiB/s ({p:.3f} s)", f"max {max(eg['proxy_rate_s']):.3f} s",
            f"same cell, direct: {mib / d:.0f} MiB/s ({d:.3f} s)",
            f"{(p / d - 1) * 100:+.1f} % time{paired(eg['direct_rate_s'], eg['proxy_rate_s'])}", "≤ +5 %")


def table(rows):
    print(f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
          f"({platform.release()}), `scripts/bench.sh`.\n")
    print("| benchmark | median | p99 | baseline (same run) | ratio | goal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if only == "egress":
    table([r for r in [egress_row(), egress_rate_row()] if r])
    sys.exit(0)

hf = {r["command"]: r["times"] for r in load("spawn.json")["results"]}
spawn = {k: (statistics.median(v) * 1e6, pct(v, 0.99) * 1e6) for k, v in hf.items()}
sock = load("socket-spawn.json")
rtt = load("rtt.json")
tput = load("throughput.json")
stream = load("stream.json")
pipe = load("pipe.json")
follow = load("follow.json")
fp = load("footprint.json")
s10 = load("spawn-10.json")
sbig = load("spawn-big.json")

bw, un = spawn["bwrap"][0], spawn["unshare"][0]
rows = []
for name in ["bare", "unshare", "bwrap"]:
    rows.append((f"spawn /bin/true: {name} (baseline)", ms(spawn[name][0]), ms(spawn[name][1]), "", "", ""))
# CPU of each command and the children it waited for (hyperfine's user/system means).
cpu = {r["command"]: (r["user"] * 1000, r["system"] * 1000) for r in load("spawn.json")["results"]}
run_cpu, bw_cpu = cpu["cellkeep run"], cpu["bwrap"]
med, p99 = spawn["cellkeep run"]
rows.append((
    "spawn /bin/true, full sandbox: `cellkeep run`",
    ms(med), ms(p99), f"bwrap {ms(bw)}; CPU {bw_cpu[0]:.1f} + {bw_cpu[1]:.1f} ms",
    f"{med / bw:.2f} × bwrap; CPU user {run_cpu[0]:.1f} + sys {run_cpu[1]:.1f} ms",
    "≤ 1.0 × bwrap, CPU ≤ bwrap's",
))
med, p99 = sock["median_us"], sock["p99_us"]
rows.append((
    "spawn /bin/true, full sandbox: daemon socket (one-shot)",
    ms(med), ms(p99), "bwrap / unshare",
    f"{med / bw:.2f} × bwrap; unshare + {(med - un) / 1000:.2f} ms",
    "≤ 0.5 × bwrap; ≤ unshare + 1.5 ms",
))
if (d / "warm-spawn.json").exists():
    warm = load("warm-spawn.json")
    bare = spawn["bare"][0]
    rows.append((
        f"spawn /bin/true, pre-built cell (`prewarm`; daemon socket, one-shot; {warm['served_warm']}/{warm['n']} served warm)",
        ms(warm["median_us"]), ms(warm["p99_us"]), f"bare exec {ms(bare)}",
        f"{warm['median_us'] / bare:.1f} × bare exec; {warm['median_us'] / bw:.2f} × bwrap", "≤ 1.5 × bare exec",
    ))
if (d / "spawn-before.json").exists():
    hb = {r["command"]: r["times"] for r in load("spawn-before.json")["results"]}
    b, a = statistics.median(hb["before"]) * 1e6, statistics.median(hb["after"]) * 1e6
    rev = (d / "spawn-before.rev").read_text().strip()
    rows.append((f"spawn /bin/true, `cellkeep run`: this build vs {rev} (before the isolation issue)",
                 ms(a), ms(pct(hb["after"], 0.99) * 1e6), f"{rev}: {ms(b)}",
                 f"{(a - b) / 1000:+.2f} ms ({a / b:.2f} ×)", "≤ +1 ms (issue 13)"))
rows.append(("session round trip (`cat`, one line)", f"{rtt['median_us']:.0f} µs", f"{rtt['p99_us']:.0f} µs",
             "Python manager ~110 ms", f"{110000 / rtt['median_us']:.0f} × faster", "median ≤ 200 µs"))
rows.append(("one-shot throughput, 20 clients (`echo`)", f"{tput['per_sec']:.0f} /s", f"p99 {ms(tput['p99_us'])}",
             "Python manager ~190 /s", f"{tput['per_sec'] / 190:.1f} ×", "≥ 900 /s (3 × the Python manager)"))
drop = f", {stream['dropped'] / 1048576:.0f} MiB dropped (lagged)" if stream["dropped"] else ""
rows.append(("streaming (socket, NDJSON)", f"{stream['mib_per_sec']:.0f} MiB/s{drop}", "",
             f"pipe {pipe['mib_per_sec']:.0f} MiB/s", f"{stream['mib_per_sec'] / pipe['mib_per_sec']:.2f} × pipe", "≥ 0.5 × pipe"))
rows.append((f"follow a {follow['bytes'] / 1073741824:.2f} GiB stream (socket, raw)",
             f"{follow['mib_per_sec']:.0f} MiB/s, {follow['lost']} bytes lost", "",
             f"pipe {pipe['mib_per_sec']:.0f} MiB/s", f"{follow['mib_per_sec'] / pipe['mib_per_sec']:.2f} × pipe",
             "≥ 0.5 × pipe, 0 bytes lost"))
rows.append(("daemon RSS: 0 / 20 / %d idle cells" % fp["big"],
             f"{fp['rss0_kib'] / 1024:.1f} / {fp['rss20_kib'] / 1024:.1f} / {fp['rssbig_kib'] / 1024:.1f} MiB", "",
             "0 cells", f"+{(fp['rssbig_kib'] - fp['rss0_kib']) / fp['big']:.0f} KiB per cell", "20 idle: ≤ 15 MiB"))
cpu = fp["idle_cpu_ticks"] / fp["clk_tck"]
rows.append((f"daemon CPU over {fp['idle_secs']} s, 20 idle cells", f"{cpu * 1000:.0f} ms", "", "", f"{cpu / fp['idle_secs'] * 100:.3f} % of a CPU", "~0 (no polling)"))
rows.append((f"spawn (session cell) with {fp['big']} live vs 10", ms(sbig["median_us"]), ms(sbig["p99_us"]),
             f"10 live: {ms(s10['median_us'])}", f"{sbig['median_us'] / s10['median_us']:.2f} ×", "≤ 1.3 ×"))
rows += [r for r in [egress_row(), egress_rate_row()] if r]
rows.append(("daemon shutdown (SIGTERM) with %d live cells" % fp["big"], f"{fp['shutdown_ms'] / 1000:.2f} s", "", "", "", ""))

table(rows)
