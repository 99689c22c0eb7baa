#!/usr/bin/env python3
"""Adds the tests a nextest run skipped to its JUnit report, with the reason.

nextest's JUnit report lists only the tests that ran. A CI system showing
that report would never show the kvm_* tests left out on a host without
/dev/kvm, or the snp_host_* tests #[ignore]d everywhere but on SNP hosts.
This script asks nextest which tests the same filter skips
(`cargo nextest list --message-format json`, read from the file given) and
adds each as a <testcase> with a <skipped message="..."/> element:

* an #[ignore = "reason"] test: "ignored: reason" (the reason is read from
  the test's source, the one place it is written);
* a test a filter expression left out: the TEXT of the first
  --filtered REGEX=TEXT whose REGEX matches its name, else the message
  given with --filtered-reason.

With --require-run REGEX, exits 1 (after writing the report) when any
skipped test's name matches REGEX: scripts/test.sh passes '(^|::)kvm_' where /dev/kvm
is usable, so a kvm_* test can never be skipped there unnoticed.

Usage: junit_skips.py JUNIT_XML NEXTEST_LIST_JSON [--filtered REGEX=TEXT]...
                      [--filtered-reason TEXT] [--require-run REGEX]
"""

import argparse
import json
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

IGNORE_RE = re.compile(
    r'#\[ignore\s*=\s*"((?:[^"\\]|\\.)*)"\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?fn\s+(\w+)'
)


def ignore_reasons(root):
    """Test function name -> its #[ignore = "..."] reason, from the sources."""
    reasons = {}
    for path in root.rglob("*.rs"):
        if "target" in path.relative_to(root).parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for m in IGNORE_RE.finditer(text):
            reasons.setdefault(m.group(2), m.group(1))
    return reasons


def skipped_tests(listing):
    """(suite, name, why) for every test the listing's filter left out."""
    for suite_id, suite in sorted(listing.get("rust-suites", {}).items()):
        for name, case in sorted(suite.get("testcases", {}).items()):
            match = case.get("filter-match", {})
            if match.get("status") == "matches":
                continue
            yield suite_id, name, match.get("reason", "unknown")


def suite_element(report, suite_id):
    for suite in report.iter("testsuite"):
        if suite.get("name") == suite_id:
            return suite
    suite = ET.SubElement(
        report, "testsuite", name=suite_id, tests="0", disabled="0", errors="0", failures="0"
    )
    return suite


def bump(element, attribute):
    element.set(attribute, str(int(element.get(attribute, "0")) + 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit")
    parser.add_argument("listing")
    parser.add_argument("--filtered", action="append", default=[], metavar="REGEX=TEXT")
    parser.add_argument("--filtered-reason", default="left out by the run's filter")
    parser.add_argument("--require-run", default=None)
    args = parser.parse_args()

    listing = json.loads(pathlib.Path(args.listing).read_text(encoding="utf-8"))
    reasons = ignore_reasons(pathlib.Path(__file__).resolve().parent.parent)
    tree = ET.parse(args.junit)
    report = tree.getroot()
    must_run = re.compile(args.require_run) if args.require_run else None
    filtered = []
    for rule in args.filtered:
        pattern, sep, text = rule.partition("=")
        if not sep:
            parser.error(f"--filtered {rule!r}: expected REGEX=TEXT")
        filtered.append((re.compile(pattern), text))
    added = 0
    offenders = []
    for suite_id, name, why in skipped_tests(listing):
        if why == "ignored":
            message = "ignored: " + reasons.get(name, "#[ignore] without a reason")
        else:
            message = next(
                (text for pattern, text in filtered if pattern.search(name)),
                args.filtered_reason,
            )
        suite = suite_element(report, suite_id)
        case = ET.SubElement(suite, "testcase", name=name, classname=suite_id, time="0")
        ET.SubElement(case, "skipped", message=message)
        for element in (suite, report):
            bump(element, "tests")
            bump(element, "skipped")
        added += 1
        if must_run and must_run.search(name):
            offenders.append(f"{suite_id} {name}: {message}")
    ET.indent(tree)
    tree.write(args.junit, encoding="UTF-8", xml_declaration=True)
    print(f"junit_skips: {added} skipped test(s) added to {args.junit}")
    if offenders:
        print(
            f"junit_skips: {len(offenders)} test(s) matching {args.require_run!r} "
            "were skipped where they must run:",
            file=sys.stderr,
        )
        for line in offenders:
            print("  " + line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
