#!/usr/bin/env python3
"""Compare reruns of one suite with a reference run: the table docs/reproducibility.md keeps.

Usage: compare_reruns.py PROFILE REFERENCE_DIR RUN_DIR...

Each DIR is a results folder (results-PROFILE.jsonl in it) with the run's console output saved
beside it as `log.txt`. Per run: passes, cases whose generated tokens or verdict differ from the
reference's, how the run followed the accepted outputs (steps kept through near ties, rows that
left them) and its cost (generation + scoring from the timeline line, peak device memory).
"""

import json
import re
import sys
from pathlib import Path


def load(run_dir: Path, profile: str) -> dict:
    """Per case key: (token ids, passed, followed, kept gaps) of the first sample."""
    rows = {}
    for line in (run_dir / f"results-{profile}.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        sample = row["samples"][0] if row.get("samples") else {}
        tokens = sample.get("tokens") or {}
        rows[row["key"]] = {
            "ids": tuple(tokens.get("ids", [])),
            "passed": bool(sample.get("passed")),
            "followed": sample.get("followed"),
            "kept": [k["gap"] for k in tokens.get("kept", [])],
        }
    return rows


def cost(run_dir: Path) -> tuple:
    """(seconds from setup to the last verdict, peak device MiB) from the saved console output."""
    log = (run_dir / "log.txt").read_text(errors="replace") if (run_dir / "log.txt").exists() else ""
    last = re.search(r"last verdict at ([0-9.]+) s", log)
    setup = re.search(r"timeline: setup ([0-9.]+) s", log)
    device = re.search(r"device ([0-9]+) MiB", log)
    span = float(last.group(1)) - float(setup.group(1)) if last and setup else None
    return span, int(device.group(1)) if device else None


def left_gaps(rows: dict) -> list:
    """The gaps at which rows left the accepted output (beyond the tolerance)."""
    gaps = []
    for r in rows.values():
        f = r["followed"]
        if isinstance(f, dict) and "left" in f:
            gaps.append(f["left"]["gap"])
    return gaps


def describe(name: str, rows: dict, ref: dict, run_dir: Path) -> str:
    common = [k for k in ref if k in rows]
    tokens = sum(rows[k]["ids"] != ref[k]["ids"] for k in common)
    verdicts = sum(rows[k]["passed"] != ref[k]["passed"] for k in common)
    kept = [g for r in rows.values() for g in r["kept"]]
    kept_cases = sum(1 for r in rows.values() if r["kept"])
    left = left_gaps(rows)
    span, device = cost(run_dir)
    return "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        name,
        sum(r["passed"] for r in rows.values()),
        len(rows),
        tokens,
        verdicts,
        f"{len(kept)} in {kept_cases}",
        f"{max(kept):.3f}" if kept else "-",
        f"{len(left)} (largest {max(left):.3f})" if left else "0",
        f"{span:.1f} s" if span is not None else "?",
        f"{device} MiB" if device is not None else "?",
    )


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    profile, ref_dir, runs = sys.argv[1], Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    ref = load(ref_dir, profile)
    print(
        "| run | passed | cases | tokens differ from reference | verdicts differ | steps kept "
        "(near ties) | largest kept gap | rows that left it | generation + scoring | peak GPU memory |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(describe(f"{ref_dir.name} (reference)", ref, ref, ref_dir))
    for run in runs:
        print(describe(run.name, load(run, profile), ref, run))


if __name__ == "__main__":
    main()
