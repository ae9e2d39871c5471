"""The ImageNet recipes x TPU slices x attention table of the README, by `arjax plan` (needs libtpu).

    python benchmarks/plan_matrix.py --out runs/plan_matrix.json          # all rows (resumable)
    python benchmarks/plan_matrix.py --out runs/plan_matrix.json --table  # print what is done

Every row is one `arjax plan --config configs/imagenet.py:dN --topology SLICE --json` in a fresh process
(XLA's compile memory goes with it): first each recipe on the slice it names (`plan.topology`, its
microbatches) with the block-sparse kernel and with dense XLA attention, then each 256 px recipe on the
other slices in one microbatch. With --search every kernel row also searches the largest per-chip batch
that fits (3-5 more compiles each; without it only d16 on its slice does). Results are
appended to --out as they finish, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAMED = {16: ("v5e-16", 1), 20: ("v4-32", 2), 24: ("v5p-32", 1), 30: ("v6e-32", 2), 36: ("v5p-64", 1)}
OTHER_SLICES = ("v6e-8", "v5p-32", "v6e-32", "v5e-16")
GiB = 2 ** 30


def rows(search: bool = False):
    """(depth, slice, microbatches, attention impl, search the max batch), most informative first. The
    batch search costs 3-5 compiles per row; without --search only the first row searches."""
    for depth, (sl, accum) in NAMED.items():
        yield depth, sl, accum, "auto", search or depth == 16
    for depth, (sl, accum) in NAMED.items():
        yield depth, sl, accum, "xla", False
    for sl in OTHER_SLICES:
        for depth in (16, 20, 24, 30):
            if NAMED[depth][0] != sl:
                yield depth, sl, 1, "auto", search


def key(row) -> str:
    return "d{}|{}|{}|{}".format(*row[:4])


def run_row(row, max_compiles: int) -> dict:
    from arjax import plan
    depth, sl, accum, impl, search = row
    req = plan.Request(f"configs/imagenet.py:d{depth}", [f"accum_steps={accum}", f"model.attn_impl={impl}"],
                       topology=sl)
    extra = ["--max-batch", "--max-compiles", str(max_compiles)] if search else []
    t0 = time.time()
    r = plan.run_child(req, extra=extra, timeout=7200)
    r["seconds"] = time.time() - t0
    return r


def table(done: dict, search: bool = False) -> str:
    head = ["recipe", "slice", "global batch / per chip x microbatches", "attention", "peak GiB / chip",
            "temporaries GiB", "TFLOPs / step / chip", "fits (free)", "max per-chip batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(search):
        r = done.get(key(row))
        if r is None:
            continue
        depth, sl, accum, impl, _ = row
        recipe = f"d{depth}" + (", 512 px" if depth == 36 else "")
        attention = "kernel (splash)" if impl == "auto" else "dense XLA"
        if "error" in r:
            lines.append(f"| {recipe} | {sl} | | {attention} | error: {r['error'][:100]} | | | | |")
            continue
        p, s = r["plan"], r.get("max_batch")
        per_chip = p["batch_size"] // p["batch_shards"]
        batch = f"{p['batch_size']} / {per_chip} x {p['accum_steps']}"
        if p["fits"] and p["margin"] < 0:  # XLA:TPU compiled it, yet arguments + temporaries exceed the HBM
            fits = f"compiled, but peak > {p['usable_bytes'] / GiB:.2f} usable: unverified"
        elif p["fits"]:
            fits = f"yes ({100 * p['margin']:.0f}%)"
        else:
            fits = f"no (needs {p['needed_bytes'] / GiB:.1f} of {p['usable_bytes'] / GiB:.2f})"
        temps = p["temp_estimate"] / GiB
        best = "-" if not s else f"{s['best']}" + ("" if s["converged"] else "?")
        lines.append(f"| {recipe} | {sl} | {batch} | {attention} | {p['peak_bytes'] / GiB:.1f} | "
                     f"{'' if p['temp_bytes'] is not None else '~'}{temps:.1f} | {p['flops'] / 1e12:.1f} | {fits} | "
                     f"{best} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/plan_matrix.json")
    ap.add_argument("--table", action="store_true", help="print the table of finished rows and stop")
    ap.add_argument("--max-compiles", type=int, default=4, help="per max-batch search")
    ap.add_argument("--search", action="store_true", help="search the largest per-chip batch on every kernel row")
    args = ap.parse_args(argv)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else {}
    if not args.table:
        out.parent.mkdir(parents=True, exist_ok=True)
        for row in rows(args.search):
            if key(row) in done:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {key(row)} ...", flush=True)
            done[key(row)] = run_row(row, args.max_compiles)
            out.write_text(json.dumps(done, indent=1))
            print(f"  {done[key(row)]['seconds']:.0f} s", flush=True)
    print(table(done, args.search))


if __name__ == "__main__":
    main()
