#!/usr/bin/env python3
"""What proving the data's ids fit the vocabulary costs before training starts
(`flm_ext.data.checks.check_data_matches`, run by the trainer for every --data-path).

Builds a `.bin`/`.idx` pair of `--gib` GiB (uint16 ids below 1,024, documents of 4,096 tokens) with
the project's own writer and its sidecar, then times the check, alternating the variants:
"sidecar": the sidecar's fingerprint (size, token count, hash of 16 sampled windows) matches the
`.bin`, so its recorded largest id is trusted; "scan": no sidecar, so every id is read (numpy
min/max over memory-mapped chunks). Both from the page cache (the file was just written); a cold
read from disk adds the disk's read time to "scan" only.

  python benchmarks/data_id_check.py --workdir /tmp/idcheck --gib 1
"""
import argparse
import os
import platform
import shutil
import statistics
import time
import types


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import numpy

    from flm_ext.data.checks import check_data_matches
    from flm_ext.data.indexed_writer import SpillWriter, merge_to_indexed
    from flm_ext.data.sidecar import make_sidecar, sidecar_path
    from flm_ext.fileio import atomic_write_json

    os.makedirs(args.workdir, exist_ok=True)
    prefix = os.path.join(args.workdir, "bench_text_document")
    tok = types.SimpleNamespace(name="bench", vocab_size=1024, vocab_fingerprint="f" * 64, eod=0,
                                unique_identifiers={"bench": 1})
    doc, per_write = 4096, 1024
    docs = int(args.gib * 2 ** 30) // 2 // doc
    rng = numpy.random.default_rng(0)
    writer = SpillWriter(prefix + ".part", numpy.uint16)
    for start in range(0, docs, per_write):
        n = min(per_write, docs - start)
        writer.add(rng.integers(0, 1024, n * doc, dtype=numpy.uint16), numpy.full(n, doc))
    writer.close()
    merge_to_indexed([prefix + ".part"], numpy.uint16, prefix + ".bin", prefix + ".idx")
    record = make_sidecar(tok, "bench", documents=docs, sequences=docs, tokens=docs * doc, max_token_id=1023,
                          dtype="uint16", inputs=[], flags={}, bin_path=prefix + ".bin")
    atomic_write_json(sidecar_path(prefix), record)
    size = os.path.getsize(prefix + ".bin")
    print(f"{prefix}.bin: {size / 2 ** 30:.2f} GiB, {size // 2:,} ids; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")

    def evict():
        fd = os.open(prefix + ".bin", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    times = {"sidecar": [], "scan": [], "sidecar cold": [], "scan cold": []}
    for _ in range(args.repeats):
        for variant in times:
            if variant.endswith("cold"):
                evict()
            if variant.startswith("scan"):
                os.replace(sidecar_path(prefix), prefix + ".json.away")
            start = time.perf_counter()
            notes = check_data_matches(prefix, tok, 1024)
            times[variant].append(time.perf_counter() - start)
            if variant.startswith("scan"):
                os.replace(prefix + ".json.away", sidecar_path(prefix))
                assert notes and "all" in notes[0], notes  # it did scan
            else:
                assert notes == [], notes
    for variant, ts in times.items():
        print(f"{variant}: median {1e3 * statistics.median(ts):.1f} ms, min {1e3 * min(ts):.1f} ms over {len(ts)} "
              f"({size / 2 ** 30 / statistics.median(ts):.2f} GiB/s)")
    print(f"load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
