#!/usr/bin/env python3
"""The verdict and the per-file table of one or more cargo-mutants runs.

Usage: scripts/mutants_table.py OUTCOMES_JSON...

Reads each run's mutants.out/outcomes.json and two lists in
docs/testing.md, each a Markdown table whose first column is in
backticks:

* between `equivalent:begin` and `equivalent:end`, mutants no test can
  tell from the code: the mutant's file and description without its line
  and column (`file: description`), then the reason;
* between `snp-host:begin` and `snp-host:end`, functions that run only on
  an SEV-SNP host (`file: function`, as cargo-mutants names it), then why.

Prints a Markdown table per source file (caught, missed, equivalent,
needing an SNP host, unviable, timed out, and the seconds its mutants
took to build and test), then every missed mutant in neither list, and
entries of the lists that matched nothing.

A mutant that times out made the tests hang: that is noticed, so it
counts as caught for the verdict, and is listed so it can be looked at.

Exit status 1 when a mutant was missed and is not listed as equivalent,
or when a run has no outcomes (it did not finish); else 0.
"""

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
# "file:line:col: description"
NAME = re.compile(r"^(?P<file>[^:]+):\d+:\d+: (?P<what>.*)$")


def listed(section):
    """The first-column keys of the table between `section`'s markers."""
    text = DOCS.read_text(encoding="utf-8")
    begin = text.find(f"<!-- {section}:begin -->")
    end = text.find(f"<!-- {section}:end -->")
    if begin < 0 or end < begin:
        sys.exit(f"mutants_table: {DOCS} has no {section}:begin/end markers")
    keys = set()
    for line in text[begin:end].splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if m:
            # A pipe inside a table cell is written `\|`.
            keys.add(m.group(1).replace("\\|", "|"))
    return keys


def key(name):
    m = NAME.match(name)
    return f"{m.group('file')}: {m.group('what')}" if m else name


def main(paths):
    equivalent, snp_host = listed("equivalent"), listed("snp-host")
    counts = defaultdict(lambda: defaultdict(int))
    seconds = defaultdict(float)
    missed, timeouts, used = [], [], set()
    broken = False
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"mutants_table: no outcomes in {path}: {e}", file=sys.stderr)
            broken = True
            continue
        if data.get("end_time") is None:
            print(f"mutants_table: {path}: the run did not finish", file=sys.stderr)
            broken = True
        for outcome in data["outcomes"]:
            scenario = outcome["scenario"]
            if scenario == "Baseline":
                if outcome["summary"] != "Success":
                    print(f"mutants_table: {path}: the tests fail without any mutation",
                          file=sys.stderr)
                    broken = True
                continue
            mutant = scenario["Mutant"]
            file, name = mutant["file"], mutant["name"]
            seconds[file] += sum(p["duration"] for p in outcome["phase_results"])
            summary = outcome["summary"]
            if summary == "MissedMutant":
                k = key(name)
                function = (mutant.get("function") or {}).get("function_name", "")
                f = f"{file}: {function}"
                if k in equivalent:
                    used.add(k)
                    counts[file]["equivalent"] += 1
                elif f in snp_host:
                    used.add(f)
                    counts[file]["snp-host"] += 1
                else:
                    counts[file]["missed"] += 1
                    missed.append(name)
            elif summary == "CaughtMutant":
                counts[file]["caught"] += 1
            elif summary == "Unviable":
                counts[file]["unviable"] += 1
            elif summary == "Timeout":
                counts[file]["timeout"] += 1
                timeouts.append(name)
            else:
                counts[file][summary.lower()] += 1

    columns = ["caught", "missed", "equivalent", "snp-host", "unviable", "timeout"]
    print("| file | caught | missed | equivalent | needs an SNP host | unviable | timed out | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = defaultdict(int)
    for file in sorted(counts):
        row = [counts[file][c] for c in columns]
        for c, n in zip(columns, row):
            totals[c] += n
        print(f"| `{file}` | " + " | ".join(map(str, row)) + f" | {seconds[file]:.0f} |")
    print("| **all** | " + " | ".join(str(totals[c]) for c in columns)
          + f" | {sum(seconds.values()):.0f} |")
    if timeouts:
        print("\nTimed out (the tests hung: counted as caught):")
        for name in timeouts:
            print(f"* `{name}`")
    if missed:
        print("\nMissed, and listed in neither list of docs/testing.md:")
        for name in missed:
            print(f"* `{name}`")
    # Only entries of files these runs mutated.
    unused = sorted(k for k in (equivalent | snp_host) - used if k.split(": ")[0] in counts)
    if unused and not broken:
        print("\nListed in docs/testing.md but not missed in these runs:")
        for k in unused:
            print(f"* `{k}`")
    return 1 if missed or broken else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
