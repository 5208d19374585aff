"""Sums and tables for tools/bench.sh's multi-host scenarios.

  hosts.py run OUT...     one line for one scenario run, from each process's
                          p11bench line (one file a process)
  hosts.py table RESULTS  the markdown tables: medians over the repetitions
                          in RESULTS (lines "net=.. layout=.. build=.. rep=..
                          <the run line>"), baseline beside, the targets

Round trips per commit: the provider counts, for its signature commits on
PostgreSQL, every statement it sends for them (its log's "PostgreSQL round
trips"); p11bench reports that count and the number of signature commits
(both over the whole run). Round trips per commit is their ratio summed over
the processes; the second round trips per commit are those beyond one.
"""
import statistics
import sys


def kv(line):
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def run(paths):
    hosts = []
    for p in paths:
        with open(p) as f:
            lines = [l for l in f.read().splitlines() if l.startswith("op=")]
        if not lines:
            sys.exit(f"hosts.py: no p11bench result in {p} (did the process fail? see its stderr above)")
        hosts.append(kv(lines[-1]))
    num = lambda h, k: float(h.get(k, "nan"))
    total = sum(num(h, "ops_per_s") for h in hosts)
    trips = sum(num(h, "pg_round_trips") for h in hosts)
    commits = sum(num(h, "sig_commits") for h in hosts)
    records = sum(num(h, "sig_records") for h in hosts)
    per_commit = trips / commits if commits else float("nan")
    out = {
        "total": f"{total:.0f}",
        "hosts": "/".join(f"{num(h, 'ops_per_s'):.0f}" for h in hosts),
        # The worst process's percentiles.
        "p50_us": f"{max(num(h, 'p50_us') for h in hosts):.0f}",
        "p99_us": f"{max(num(h, 'p99_us') for h in hosts):.0f}",
        "trips_per_commit": f"{per_commit:.2f}",
        "second_per_commit": f"{per_commit - 1:.3f}",
        "records_per_commit": f"{records / commits if commits else float('nan'):.1f}",
    }
    print(" ".join(f"{k}={v}" for k, v in out.items()))


LAYOUTS = ["1x16", "2x8", "4x4"]
NETS = {"loopback": "loopback (no added delay)", "delay": "emulated network"}


def table(path, delay_ms):
    runs = {}
    for line in open(path):
        d = kv(line)
        runs.setdefault((d["net"], d["layout"], d["build"]), []).append(d)
    builds = [b for b in ("new", "base") if any(k[2] == b for k in runs)]
    reps = max(len(v) for v in runs.values())

    def med(net, layout, build, key):
        vals = [float(d[key]) for d in runs.get((net, layout, build), [])]
        vals = [v for v in vals if v == v]
        return statistics.median(vals) if vals else float("nan")

    def per_host(net, layout, build):
        rs = runs.get((net, layout, build), [])
        if not rs:
            return "—"
        cols = zip(*[[float(x) for x in d["hosts"].split("/")] for d in rs])
        return " / ".join(f"{statistics.median(c):,.0f}" for c in cols)

    def pair_ratio(net, layout):
        # Each repetition's two runs ran back to back: the median of their ratios.
        new = {d["rep"]: float(d["total"]) for d in runs.get((net, layout, "new"), [])}
        old = {d["rep"]: float(d["total"]) for d in runs.get((net, layout, "base"), [])}
        ratios = [new[r] / old[r] for r in new if old.get(r)]
        return statistics.median(ratios) if ratios else float("nan")

    def fmt(v, spec):
        return "—" if v != v else format(v, spec)

    base = "base" in builds
    head = "| processes × threads | total ops/s | per process ops/s | p50 / p99 ms (worst process) | records per commit | round trips per commit | second round trips per commit |"
    rule = "|---|---|---|---|---|---|---|"
    if base:
        head += " baseline total ops/s | baseline per process | baseline p50 / p99 ms | baseline round trips per commit | this build / baseline (median of the runs' ratios) |"
        rule += "---|---|---|---|---|"
    out = []
    for net in NETS:
        if not any(k[0] == net for k in runs):
            continue
        title = NETS[net] + (f", {delay_ms} ms each way, one proxy per process" if net == "delay" else "")
        out += [f"**{title}** (medians of {reps} runs)", "", head, rule]
        for layout in LAYOUTS:
            m = lambda key, b="new": med(net, layout, b, key)
            row = (
                f"| {layout.replace('x', ' × ')} | {fmt(m('total'), ',.0f')} | {per_host(net, layout, 'new')} "
                f"| {fmt(m('p50_us') / 1000, '.1f')} / {fmt(m('p99_us') / 1000, '.1f')} "
                f"| {fmt(m('records_per_commit'), '.1f')} | {fmt(m('trips_per_commit'), '.2f')} "
                f"| {fmt(m('second_per_commit'), '.2f')} |"
            )
            if base:
                ratio = pair_ratio(net, layout)
                row += (
                    f" {fmt(m('total', 'base'), ',.0f')} | {per_host(net, layout, 'base')} "
                    f"| {fmt(m('p50_us', 'base') / 1000, '.1f')} / {fmt(m('p99_us', 'base') / 1000, '.1f')} "
                    f"| {fmt(m('trips_per_commit', 'base'), '.2f')} | **{fmt(ratio, '.2f')}×** |"
                )
            out.append(row)
        out.append("")

    # The multi-host targets, from the medians above.
    out += ["Against the multi-host targets (from the medians above):", ""]
    thead = "| target | network | this build |" + (" baseline |" if base else "")
    out += [thead, "|---|---|---|" + ("---|" if base else "")]
    targets = [
        ("2 × 8 total / 1 × 16 total ≥ 0.90", lambda n, b: med(n, "2x8", b, "total") / med(n, "1x16", b, "total"), ".2f"),
        ("4 × 4 total / 1 × 16 total ≥ 0.90", lambda n, b: med(n, "4x4", b, "total") / med(n, "1x16", b, "total"), ".2f"),
        ("second round trips < 5% of commits (2 × 8)", lambda n, b: 100 * med(n, "2x8", b, "second_per_commit"), ".1f"),
        ("second round trips < 5% of commits (4 × 4)", lambda n, b: 100 * med(n, "4x4", b, "second_per_commit"), ".1f"),
        ("p99 2 × 8 / p99 1 × 16 ≤ 2", lambda n, b: med(n, "2x8", b, "p99_us") / med(n, "1x16", b, "p99_us"), ".2f"),
    ]
    for name, f, spec in targets:
        for net in NETS:
            if not any(k[0] == net for k in runs):
                continue
            cells = []
            for b in builds:
                try:
                    v = f(net, b)
                except ZeroDivisionError:
                    v = float("nan")
                cells.append(fmt(v, spec) + ("%" if "%" in name and v == v else ""))
            out.append(f"| {name} | {net} | " + " | ".join(cells) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
