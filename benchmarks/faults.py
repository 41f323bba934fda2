"""The reliability figures: runs the fault-injection suite (tests/faults, the slow kill storm included) and
prints what it survived, per kind of fault.

    python benchmarks/faults.py            # about 6 minutes on 2 CPU cores
    python benchmarks/faults.py --fast     # without the kill storm

Every figure is a pytest item that passed or failed: a case is counted as caught only if its test asserts the
one-line message, the exit status and that good output was left as it was (see each test's docstring).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = {  # test module -> what its items are
    "test_kill_storm": "kill storm (SIGKILL at random moments, resumed each time)",
    "test_damaged_files": "damaged checkpoints and model folders refused or passed over",
    "test_malformed_configs": "malformed configs caught (one line, exit 2, nothing written)",
    "test_malformed_inputs": "malformed prompts, images, metadata and paths caught or converted",
    "test_nonfinite_and_disk_full": "NaN batches and full disks (last good checkpoint kept)",
    "test_no_unsafe_deserialisation": "no unsafe deserialisation (grep of the package)",
}


def run_suite(fast: bool) -> tuple[Path, float]:
    report = Path(tempfile.mkdtemp()) / "faults.xml"
    marks = "not slow" if fast else "slow or not slow"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "faults"),
                    "-m", marks, f"--junitxml={report}", "-o", "junit_family=xunit1"], cwd=ROOT)
    return report, time.perf_counter() - start


def read_report(report: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Per test module, [passed, failed or errored, skipped]; and the storm's recorded properties."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    storm: dict[str, str] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        outcome = 1 if case.find("failure") is not None or case.find("error") is not None else (
            2 if case.find("skipped") is not None else 0)
        counts[module][outcome] += 1
        for prop in case.iter("property"):
            storm[prop.get("name")] = prop.get("value")
    return counts, storm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="leave out the kill storm (slow)")
    args = parser.parse_args()
    report, seconds = run_suite(args.fast)
    counts, storm = read_report(report)
    print(f"\nfault-injection suite, {seconds / 60:.1f} min\n")
    print("| fault | cases | passed | failed |\n|---|---:|---:|---:|")
    for module, kind in KINDS.items():
        passed, failed, skipped = counts.get(module, [0, 0, 0])
        print(f"| {kind} | {passed + failed + skipped} | {passed} | {failed} |")
    malformed = sum(counts.get(m, [0])[0] for m in ("test_malformed_configs", "test_malformed_inputs"))
    print(f"\nmalformed inputs caught: {malformed}")
    if storm:
        steps = ast.literal_eval(storm["steps_at_kills"])
        survived = storm["kills"] if storm["differences"] == "[]" and storm["leftovers"] == "[]" else 0
        print(f"kills survived: {survived} of {storm['kills']} ({storm['kills_while_writing']} while a checkpoint, "
              f"the pipeline or the log was being written; newest checkpoint at the kills: steps "
              f"{min(steps)} to {max(steps)}, {len(set(steps))} distinct); parts of the final state not "
              f"bit-identical to an uninterrupted run: {storm['differences']}; temporary files left: "
              f"{storm['leftovers']}; storm {float(storm['seconds']) / 60:.1f} min")
    sys.exit(1 if any(c[1] for c in counts.values()) else 0)


if __name__ == "__main__":
    main()
