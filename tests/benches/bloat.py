#!/usr/bin/env python3
"""Where a function binary's bytes go, `cargo bloat --crates`-style, from `nm` alone.

Needs a build that kept its symbols (the release profile strips them):

    cargo rustc --release -p lookup_customer --bin lookup_customer -- -C strip=none
    python3 tests/benches/bloat.py target/release/lookup_customer [--top 25]

Prints the ELF sections that make up the file (`size -A`) and the code and read-only data
symbols (`nm --size-sort -S`, demangled) summed per crate: the first path segment of a Rust
symbol (`<aws_sdk_dynamodb::types::X as serde::Serialize>::serialize` counts for
`aws_sdk_dynamodb`; with LTO, a generic function is counted for the crate that defines it, not
the one that instantiated it), `aws_lc` for the C and assembly of aws-lc (its symbols carry the
`aws_lc_` prefix), `[C/libc]` for other unprefixed symbols. Sizes are the symbols' own (what
`strip` keeps); the rest of a section (padding, unwinding tables) is not attributed.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess

SEGMENT = re.compile(r"^[<&*\s]*(?:dyn |mut |const )*([A-Za-z_][A-Za-z0-9_]*)::")


def crate_of(name: str) -> str:
    if name.startswith("aws_lc_") or name.startswith("AWS_LC"):
        return "aws_lc"
    m = SEGMENT.match(name)
    if not m:
        return "[C/libc]"
    return m.group(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    sections = subprocess.run(["size", "-A", args.binary], capture_output=True, text=True,
                              check=True).stdout
    total = 0
    print("section            bytes")
    for line in sections.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            if parts[0] in (".text", ".rodata", ".data.rel.ro", ".eh_frame", ".gcc_except_table",
                            ".rela.dyn", ".eh_frame_hdr", ".data"):
                print(f"{parts[0]:<18} {int(parts[1]):>10,}")
    nm = subprocess.run(["nm", "--size-sort", "-S", "-C", args.binary], capture_output=True,
                        text=True, check=True).stdout
    per_crate: dict[str, int] = collections.Counter()
    for line in nm.splitlines():
        parts = line.split(" ", 3)
        if len(parts) != 4 or parts[2] not in "tTrRdDwW":
            continue
        size = int(parts[1], 16)
        per_crate[crate_of(parts[3])] += size
        total += size
    print(f"\nsymbols (code, read-only data): {total:,} bytes; top {args.top} crates")
    for crate, size in per_crate.most_common(args.top):
        print(f"{size / 1e6:>7.2f} MB {100 * size / total:>5.1f}%  {crate}")


if __name__ == "__main__":
    main()
