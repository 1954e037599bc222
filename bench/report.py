#!/usr/bin/env python3
"""The content report's cost, beside the backup's own: for each size, a real etcd filled to it
(Kubernetes-shaped objects: `--values objects` of 16-128 KiB, or `small` ones of 1-4 KiB, many more
keys), `snapshot` into the S3 test server (plain, and zstd+age; the backup counts its contents from
its own stream), then `verify`, which checks and counts in one pass and gives the seconds its count
took (`report_seconds`) and the bytes it wrote to its scratch folder past its memory budget
(`report_scratch_bytes`); peak RSS is each process's. Prints one JSON line a size and the ratios
against the targets (report < 0.5 x the backup's time, RSS <= 64 MiB).

    bench/report.py --sizes 256M,1G --values small   (after `cargo build --release -p talos-etcd-backup -p teb-testkit --bins`)
"""

import argparse
import atexit
import json
import shutil
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import run as bench  # noqa: E402  (the benchmark's helpers: processes, RSS sampling, sizes)

MiB = 1 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--values", default="objects", choices=["objects", "small"])
    ap.add_argument("--report-memory-mib", type=int, default=32, help="the report's budget (REPORT_MEMORY_MIB)")
    ap.add_argument("--bin", default=os.path.join(bench.ROOT, "target/release"))
    args = ap.parse_args()
    # What the servers and etcd write goes under one directory, removed at the end (killed, they
    # cannot remove their own).
    scratch = tempfile.mkdtemp(prefix="teb-report-bench-")
    atexit.register(shutil.rmtree, scratch, True)
    os.environ["TMPDIR"] = scratch
    teb_bench, teb = os.path.join(args.bin, "teb-bench"), os.path.join(args.bin, "talos-etcd-backup")
    s3 = subprocess.Popen([teb_bench, "s3-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    atexit.register(s3.kill)
    endpoint = s3.stdout.readline().decode().strip()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="YOUR_ACCESS_KEY_ID", AWS_SECRET_ACCESS_KEY="YOUR_SECRET_ACCESS_KEY",
               RUST_LOG="warn", RUST_BACKTRACE="0", REPORT_MEMORY_MIB=str(args.report_memory_mib))
    for size in [bench.parse_size(s) for s in args.sizes.split(",")]:
        work = tempfile.mkdtemp(prefix="size-", dir=scratch)
        emu = subprocess.Popen([os.path.join(args.bin, "talos-emulator"), "--listen", "127.0.0.1:0",
                                "--control-planes", "1", "--workers", "0", "--quota-backend-bytes",
                                str(2 * size + (2 << 30)), "--out", work],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        atexit.register(emu.kill)
        lines = [emu.stdout.readline().decode() for _ in range(6)]
        etcd_url = next(l.split(": ")[1].strip() for l in lines if "etcd members" in l)
        bench.run("fill", [teb_bench, "fill", "--etcd", etcd_url, "--bytes", str(size), "--values", args.values], env=env)
        talosconfig = os.path.join(work, "talosconfig-etcd-backup")
        identity = os.path.join(work, "key.txt")
        subprocess.run(["age-keygen", "-o", identity], check=True, capture_output=True)
        recipient = next(l.split(": ")[1] for l in open(identity) if l.startswith("# public key"))
        row = {"size": size, "values": args.values, "report_memory_mib": args.report_memory_mib}
        for name, key, flags in (("plain", f"bench/{size}/report.db", []),
                                 ("zstd_age", f"bench/{size}/report-sealed.db.zst.age", ["--zstd", "--age-recipient", recipient])):
            place = ["--bucket", "bench", "--endpoint", endpoint]
            backup = bench.run("snapshot", [teb, "snapshot", "--talosconfig", talosconfig, "--key", key] + place + flags,
                               env=env)
            backup = dict(backup, **bench.last_json(backup["stdout"]))
            if "not_counted" in backup["contents"]:
                # Past the budget: the backup is stored uncounted (and `verify` would fail, saying why).
                row[name] = {"not_counted": backup["contents"]["not_counted"], "backup_seconds": backup["seconds"],
                             "backup_peak_rss_mib": backup["peak_rss"] / MiB}
                continue
            verify = bench.run("verify", [teb, "verify", "--key", key, "--age-identity-file", identity] + place, env=env)
            verify = dict(verify, **bench.last_json(verify["stdout"]))
            assert backup["contents"]["keys"] == verify["contents"]["keys"], (backup["contents"], verify["contents"])
            row[name] = {
                "db_bytes": verify["contents"]["db_size"], "keys": verify["contents"]["keys"],
                "backup_seconds": backup["seconds"], "backup_peak_rss_mib": backup["peak_rss"] / MiB,
                "verify_seconds": verify["seconds"], "report_seconds": verify["report_seconds"],
                "ratio": verify["report_seconds"] / backup["seconds"], "verify_peak_rss_mib": verify["peak_rss"] / MiB,
                "disk_write": verify["disk_write"], "scratch_bytes": verify["report_scratch_bytes"],
            }
        emu.kill()
        print(json.dumps(row), flush=True)
        for name in ("plain", "zstd_age"):
            r = row[name]
            if "not_counted" in r:
                print(f"{size // MiB} MiB {args.values} {name}: not counted within {args.report_memory_mib} MiB; backup "
                      f"{r['backup_seconds']:.1f} s, peak RSS {r['backup_peak_rss_mib']:.0f} MiB", flush=True)
                continue
            print(f"{size // MiB} MiB {args.values} {name}: report {r['report_seconds']:.2f} s = {r['ratio']:.2f} x the "
                  f"backup's {r['backup_seconds']:.1f} s (target < 0.5), {r['keys']} keys; peak RSS backup "
                  f"{r['backup_peak_rss_mib']:.0f} MiB, verify {r['verify_peak_rss_mib']:.0f} MiB (target <= 64), "
                  f"{r['disk_write'] // MiB} MiB written to disk by verify, {r['scratch_bytes'] / MiB:.1f} MiB of it "
                  f"to the report's scratch folder", flush=True)


if __name__ == "__main__":
    main()
