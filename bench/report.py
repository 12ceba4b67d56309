"""Turn measurements into the benchmark's one table, the target checks of issue 2, and JSON.

Owns no measuring: it reads `Result`s. Ratios are a tool's median over mailmirror's median for
the same case, so "8.0" in unison's no-change row means mailmirror was 8 times faster.
"""

from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

FULL_SIZE = 100_000
"""Targets are judged at this size only; at smaller sizes they are informational."""
MEMORY_LIMIT_MB = 100.0
HELP_LIMIT_S = 0.15
MM = "mailmirror"
EXAMPLES = re.compile(r" \(e\.g\. .*\)$")


def _runs(runs: list[int]) -> str:
    return ",".join(str(r) for r in sorted(set(runs)))


@dataclass
class Result:
    """All repeats of one (case, tool) cell. A run that exits non-zero adds a problem and no
    time; a run that leaves the trees wrong adds problems and its time."""

    case: str
    tool: str
    seconds: list[float] = field(default_factory=list)
    peaks_mb: list[float] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (run, what is wrong)
    note: str = ""  # why the cell is empty, e.g. the case does not apply to the tool

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def peak_mb(self) -> float | None:
        return max(self.peaks_mb) if self.peaks_mb else None


@dataclass(frozen=True)
class Target:
    name: str
    detail: str
    passed: bool | None  # None: cannot be judged (a tool was not run or failed)


@dataclass
class Report:
    messages: int
    total_bytes: int
    folders: int
    seed: int
    repeat: int
    root: str
    filesystem: str
    cases: list[str]
    results: dict[tuple[str, str], Result]
    help_seconds: list[float]
    load: tuple[float, float]  # 1-minute load average at start and end
    seconds_total: float = 0.0

    @property
    def judged(self) -> bool:
        return self.messages >= FULL_SIZE

    def median(self, case: str, tool: str) -> float | None:
        result = self.results.get((case, tool))
        return result.median if result else None

    def ratio(self, case: str, tool: str) -> float | None:
        mine, theirs = self.median(case, MM), self.median(case, tool)
        return theirs / mine if mine and theirs is not None else None

    def correct(self) -> bool:
        """True when no mailmirror run failed or left the trees wrong."""
        return not any(r.problems for (_, tool), r in self.results.items() if tool == MM)

    def targets(self) -> list[Target]:
        first, nochange, delta = self.cases
        out = []

        def faster(case: str, tool: str, factor: float, what: str) -> None:
            mine, theirs = self.median(case, MM), self.median(case, tool)
            if mine is None or theirs is None:
                out.append(Target(what, "not measured", None))
            else:
                detail = f"{mine:.2f} s vs {tool} {theirs:.2f} s ({theirs / mine:.2f}x)"
                out.append(Target(what, detail, theirs >= factor * mine))

        faster(nochange, "doveadm", 1, f"{nochange}: no slower than doveadm")
        faster(nochange, "unison", 8, f"{nochange}: >= 8x faster than unison")
        faster(delta, "doveadm", 4, f"{delta}: >= 4x faster than doveadm")
        mine, floor = self.median(first, MM), self.median(first, "rsync")
        if mine is None or floor is None:
            out.append(Target(f"{first}: within 1.5x of rsync -a", "not measured", None))
        else:
            detail = f"{mine:.2f} s vs rsync {floor:.2f} s ({mine / floor:.2f}x)"
            out.append(Target(f"{first}: within 1.5x of rsync -a", detail, mine <= 1.5 * floor))
        peaks = [r.peak_mb for (_, t), r in self.results.items() if t == MM and r.peak_mb]
        if peaks:
            peak = max(peaks)
            out.append(
                Target(f"peak memory < {MEMORY_LIMIT_MB:.0f} MB", f"{peak:.1f} MB", peak < 100)
            )
        else:
            out.append(Target(f"peak memory < {MEMORY_LIMIT_MB:.0f} MB", "not measured", None))
        if self.help_seconds:
            help_s = statistics.median(self.help_seconds)
            out.append(Target("`mailmirror --help` < 0.15 s", f"{help_s:.3f} s", help_s < 0.15))
        return out

    def targets_failed(self) -> bool:
        return self.judged and any(t.passed is False for t in self.targets())

    def to_text(self) -> str:
        size = f"{self.messages:,} messages ({self.total_bytes / 2**30:.2f} GiB"
        lines = [
            f"mailmirror benchmark: {size}, {self.folders} folders, seed {self.seed}), "
            f"medians of {self.repeat}",
            f"trees under {self.root} ({self.filesystem}); cur/ and new/ mtimes set 10 s back "
            "before each no-change run, for every tool",
            f"{os.cpu_count()} CPUs, load average {self.load[0]:.2f} at start, "
            f"{self.load[1]:.2f} at end (other work on the machine skews every figure)",
            "",
            "| case | tool | median s | ÷ mailmirror | peak MB | runs s | check |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for (case, tool), r in self.results.items():
            median = "-" if r.median is None else f"{r.median:.3f}"
            ratio = self.ratio(case, tool)
            peak = "-" if r.peak_mb is None else f"{r.peak_mb:.1f}"
            runs = " ".join(f"{s:.2f}" for s in r.seconds) or "-"
            runs_wrong = sorted({run for run, _ in r.problems})
            check = f"WRONG in runs {_runs(runs_wrong)}" if r.problems else r.note or "ok"
            ratio_text = "-" if ratio is None else f"{ratio:.2f}"
            lines.append(
                f"| {case} | {tool} | {median} | {ratio_text} | {peak} | {runs} | {check} |"
            )
        if self.help_seconds:
            help_runs = " ".join(f"{s:.3f}" for s in self.help_seconds)
            lines += ["", f"`mailmirror --help`: {help_runs} s"]
        mode = (
            f"judged at {FULL_SIZE:,} messages"
            if self.judged
            else f"informational: judged at {FULL_SIZE:,} messages only"
        )
        lines += ["", f"Targets (issue 2), {mode}:"]
        for t in self.targets():
            verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t.passed]
            lines.append(f"  {verdict}  {t.name:44} {t.detail}")
        if any(r.problems for r in self.results.values()):
            lines += [
                "",
                "Correctness problems (mailmirror's fail the run; others' for information):",
            ]
            for r in self.results.values():
                # Same problem in several runs: one line. Examples only for mailmirror.
                runs: dict[str, list[int]] = {}
                for run, text in r.problems:
                    if r.tool != MM:
                        text = EXAMPLES.sub("", text)
                    runs.setdefault(text, []).append(run)
                for text, which in runs.items():
                    lines.append(f"  {r.tool}, {r.case}, runs {_runs(which)}: {text}")
        lines += ["", f"whole benchmark: {self.seconds_total:.0f} s"]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.total_bytes,
            "folders": self.folders,
            "seed": self.seed,
            "repeat": self.repeat,
            "root": self.root,
            "filesystem": self.filesystem,
            "cpus": os.cpu_count(),
            "load_average": list(self.load),
            "results": [
                {
                    "case": r.case,
                    "tool": r.tool,
                    "seconds": r.seconds,
                    "median": r.median,
                    "ratio_to_mailmirror": self.ratio(r.case, r.tool),
                    "peak_mb": r.peak_mb,
                    "problems": [{"run": run, "problem": text} for run, text in r.problems],
                }
                for r in self.results.values()
            ],
            "help_seconds": self.help_seconds,
            "targets": [
                {"name": t.name, "detail": t.detail, "passed": t.passed, "judged": self.judged}
                for t in self.targets()
            ],
            "correct": self.correct(),
            "seconds_total": self.seconds_total,
        }
