#!/usr/bin/env python3
"""Builds the workspace's binaries (`cargo build --workspace --bins`) right after
`cargo test --workspace --all-targets` and fails if that compiled any dependency again.

Both commands resolve the same features (tests/Cargo.toml names the features that only
dev-dependencies would turn on), so the second one only links the workspace's own binaries.
A dependency compiled twice means a dev-dependency turned on a new feature somewhere in the
graph: the script names the crates that differ so the feature can be added to that list.
"""
import json
import os
import subprocess
import sys

cargo = os.environ.get("CARGO", "cargo")
proc = subprocess.Popen(
    [cargo, "build", "--workspace", "--bins", "--message-format=json-render-diagnostics"],
    stdout=subprocess.PIPE,
    text=True,
)
rebuilt = []
for line in proc.stdout:
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        continue
    if msg.get("reason") != "compiler-artifact" or msg.get("fresh"):
        continue
    # Workspace members are path dependencies; registry crates carry a registry source.
    if msg["package_id"].startswith("registry+"):
        rebuilt.append(msg["package_id"].split("#")[-1] + " [" + ",".join(sorted(msg["features"])) + "]")
if proc.wait() != 0:
    sys.exit(proc.returncode)
if rebuilt:
    print("build_once: `cargo build --workspace --bins` compiled dependencies `cargo test` had "
          "already compiled with other features:", file=sys.stderr)
    for crate in rebuilt:
        print("  " + crate, file=sys.stderr)
    print("Name the features dev-dependencies turn on in tests/Cargo.toml.", file=sys.stderr)
    sys.exit(1)
print("build_once: the binaries reused every dependency of the test build")
