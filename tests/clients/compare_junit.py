"""Compare per-test outcomes of a client library's suite run against etcd and qetcd.

Reads <results>/<suite>-etcd.xml and <results>/<suite>-qetcd.xml (pytest --junitxml)
for each suite named, prints a table of the outcomes, and exits 1 if a test that passed
on etcd did not pass on qetcd, or if etcd passed nothing (then the run proves nothing).

Usage: compare_junit.py RESULTS_DIR SUITE...
"""

import os
import sys
import xml.etree.ElementTree as ElementTree

# Gaps in qetcd that another branch closes: such a test may fail on qetcd only with
# this text in its failure (qetcd's own "not there yet" error), and is then reported,
# not counted. Once it passes, the entry is reported as stale: remove it.
PENDING: dict = {}

# Worse outcomes win when pytest reports a test more than once (a failing teardown
# after a passing call).
RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def outcomes(path):
    """Test id -> passed / skipped / failed / error, from a junit XML file."""
    if not os.path.exists(path):
        sys.exit(f"no results: {path} (see the .pytest.log and .server.log beside it)")
    result = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
        if RANK[outcome] >= RANK.get(result.get(test, "passed"), 0):
            result[test] = outcome
    return result


def failure_text(path, test):
    """Everything pytest recorded about a test's failure or error."""
    text = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        if f"{case.get('classname')}::{case.get('name')}" == test:
            for child in case:
                if child.tag in ("failure", "error"):
                    text += [child.get("message") or "", child.text or ""]
    return "\n".join(text)


def first_line(path, test):
    """The failure message pytest recorded for a test, shortened."""
    lines = failure_text(path, test).strip().splitlines()
    summary = lines[0] if lines else ""
    # grpc's errors put the server's message on a later line: "details = ...".
    details = next((line.strip() for line in lines if "details = " in line), "")
    if details and details not in summary:
        summary = f"{summary} {details}"
    return summary[:240]


def main():
    results, suites = sys.argv[1], sys.argv[2:]
    regressions = []
    for suite in suites:
        etcd_xml = os.path.join(results, f"{suite}-etcd.xml")
        qetcd_xml = os.path.join(results, f"{suite}-qetcd.xml")
        etcd, qetcd = outcomes(etcd_xml), outcomes(qetcd_xml)
        tests = sorted(set(etcd) | set(qetcd))
        counts = {}
        for test in tests:
            pair = (etcd.get(test, "missing"), qetcd.get(test, "missing"))
            counts[pair] = counts.get(pair, 0) + 1
        print(f"== {suite}: {len(tests)} tests; outcomes (etcd 3.4 -> qetcd):")
        for (on_etcd, on_qetcd), n in sorted(counts.items()):
            print(f"   {on_etcd:>7} -> {on_qetcd:<7} {n}")
        for test in tests:
            on_etcd, on_qetcd = etcd.get(test, "missing"), qetcd.get(test, "missing")
            if on_etcd == "skipped" and on_qetcd == "skipped":
                print(f"   skipped on both: {test}")
            elif on_etcd not in ("passed", "missing") and on_qetcd != "passed":
                print(f"   fails on etcd 3.4 too ({on_etcd}): {test}: "
                      f"{first_line(etcd_xml, test)}")
            elif on_etcd != "passed" and on_qetcd == "passed":
                print(f"   passes on qetcd only (etcd: {on_etcd}): {test}")
        if not any(outcome == "passed" for outcome in etcd.values()):
            regressions.append(f"{suite}: no test passed on etcd 3.4: the run proves nothing")
        for test in tests:
            pending = PENDING.get((suite, test))
            if pending and qetcd.get(test) == "passed":
                print(f"   stale PENDING entry, it passes now: {test}")
            if etcd.get(test) == "passed" and qetcd.get(test) != "passed":
                if pending and pending in failure_text(qetcd_xml, test):
                    print(f"   pending (\"{pending}\" on qetcd): {test}")
                    continue
                why = first_line(qetcd_xml, test)
                regressions.append(
                    f"{suite}: {test}: {qetcd.get(test, 'missing')} on qetcd: {why}"
                )
    if regressions:
        print("== passed on etcd 3.4 but not on qetcd:")
        for line in regressions:
            print(f"   {line}")
        sys.exit(1)
    print("== every test that passed on etcd 3.4 passed on qetcd")


if __name__ == "__main__":
    main()
