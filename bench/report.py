"""Turn measurements into the benchmark's one table, the target checks of issues 2 (local) and 3
(over SSH), and JSON.

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
MM_SFTP = "mailmirror-sftp"
MM_PLAIN = "mailmirror-plain"
MM_TOOLS = (MM, MM_SFTP, MM_PLAIN)
EXAMPLES = re.compile(r" \(e\.g\. .*\)$")


def case_names(label: str) -> tuple[str, str, str]:
    """The three cases of one transport: first copy, no change, delta."""
    return f"first copy, {label}", f"no change, {label}", f"delta, {label}"


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
    remote_peaks_mb: list[float] = field(default_factory=list)  # over SSH: the remote side
    problems: list[tuple[int, str]] = field(default_factory=list)  # (run, what is wrong)
    note: str = ""  # why the cell is empty (n/a), or how the tool's expected result differs

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def peak_mb(self) -> float | None:
        return max(self.peaks_mb) if self.peaks_mb else None

    @property
    def remote_peak_mb(self) -> float | None:
        return max(self.remote_peaks_mb) if self.remote_peaks_mb else None


@dataclass(frozen=True)
class Target:
    name: str
    detail: str
    passed: bool | None  # None: cannot be judged (a tool was not run or failed)
    info: bool = False  # figures shown beside the targets, never judged


@dataclass
class Report:
    messages: int
    total_bytes: int
    folders: int
    seed: int
    repeat: int
    root: str
    filesystem: str
    transports: list[str]  # labels, e.g. ["local", "ssh"]
    results: dict[tuple[str, str], Result]
    help_seconds: list[float]
    ssh_connect_seconds: list[float]  # `ssh HOST true` through the bench's sshd
    slow_link: str | None  # the rate the loopback was shaped to (--slow-link), or None
    load: tuple[float, float]  # 1-minute load average at start and end
    load_max: float = 0.0  # highest 1-minute load average seen after a timed run
    seconds_total: float = 0.0

    @property
    def cases(self) -> list[str]:
        return [case for label in self.transports for case in case_names(label)]

    @property
    def judged(self) -> bool:
        return self.messages >= FULL_SIZE and not self.slow_link

    def median(self, case: str, tool: str) -> float | None:
        result = self.results.get((case, tool))
        return result.median if result else None

    def ratio(self, case: str, tool: str) -> float | None:
        mine, theirs = self.median(case, MM), self.median(case, tool)
        return theirs / mine if mine and theirs is not None else None

    def correct(self) -> bool:
        """True when no mailmirror run failed or left the trees wrong."""
        return not any(r.problems for (_, tool), r in self.results.items() if tool in MM_TOOLS)

    def targets(self) -> list[Target]:
        out: list[Target] = []
        for label in self.transports:
            out += self._ssh_targets(label) if label == "ssh" else self._local_targets(label)
        if self.help_seconds:
            help_s = statistics.median(self.help_seconds)
            out.append(Target("`mailmirror --help` < 0.15 s", f"{help_s:.3f} s", help_s < 0.15))
        return out

    def _faster(self, case: str, tool: str, factor: float, what: str, mm: str = MM) -> Target:
        mine, theirs = self.median(case, mm), self.median(case, tool)
        if mine is None or theirs is None:
            return Target(what, "not measured", None)
        detail = f"{mine:.2f} s vs {tool} {theirs:.2f} s ({theirs / mine:.2f}x)"
        return Target(what, detail, theirs >= factor * mine)

    def _near_rsync(self, case: str, what: str, mm: str = MM) -> Target:
        mine, floor = self.median(case, mm), self.median(case, "rsync")
        if mine is None or floor is None:
            return Target(what, "not measured", None)
        detail = f"{mine:.2f} s vs rsync {floor:.2f} s ({mine / floor:.2f}x)"
        return Target(what, detail, mine <= 1.5 * floor)

    def _peak(
        self, what: str, cases: tuple[str, ...], tools: tuple[str, ...], remote: bool = False
    ) -> Target:
        peaks = [
            peak
            for (case, tool), r in self.results.items()
            if case in cases
            and tool in tools
            and (peak := r.remote_peak_mb if remote else r.peak_mb)
        ]
        if not peaks:
            return Target(what, "not measured", None)
        peak = max(peaks)
        return Target(what, f"{peak:.1f} MB", peak < MEMORY_LIMIT_MB)

    def _local_targets(self, label: str) -> list[Target]:
        """Issue 2, the local engine."""
        first, nochange, delta = cases = case_names(label)
        limit = f"{MEMORY_LIMIT_MB:.0f} MB"
        return [
            self._faster(nochange, "doveadm", 1, f"{nochange}: no slower than doveadm"),
            self._faster(nochange, "unison", 8, f"{nochange}: >= 8x faster than unison"),
            self._faster(delta, "doveadm", 4, f"{delta}: >= 4x faster than doveadm"),
            self._near_rsync(first, f"{first}: within 1.5x of rsync -a"),
            self._peak(f"{label}: peak memory < {limit}", cases, (MM,)),
        ]

    def _ssh_targets(self, label: str) -> list[Target]:
        """Issue 3, over the loopback sshd: the agent judged, the SFTP fallback beside it."""
        first, nochange, delta = cases = case_names(label)
        limit = f"{MEMORY_LIMIT_MB:.0f} MB"
        out = [
            self._faster(nochange, "unison", 3, f"{nochange}: >= 3x faster than unison"),
            self._faster(delta, "unison", 3, f"{delta}: >= 3x faster than unison"),
            self._near_rsync(first, f"{first}: within 1.5x of rsync -a"),
            self._peak(f"{label}: client peak memory < {limit}", cases, MM_TOOLS),
            self._peak(f"{label}: agent peak memory < {limit}", cases, (MM, MM_PLAIN),
                       remote=True),
        ]
        if any(tool == MM_PLAIN for _, tool in self.results):
            # a sync that connects itself (the first of a pair in 16 minutes, or
            # --keep-connection 0): shown beside, not judged
            plain = [
                self._faster(nochange, "unison", 3,
                             f"{nochange}, --keep-connection 0: vs unison", MM_PLAIN),
                self._faster(delta, "unison", 3,
                             f"{delta}, --keep-connection 0: vs unison", MM_PLAIN),
            ]
            out += [Target(t.name, t.detail, t.passed, info=True) for t in plain]
        if any(tool == MM_SFTP for _, tool in self.results):
            sftp = [
                self._faster(nochange, "unison", 3, f"{nochange}, SFTP: vs unison", MM_SFTP),
                self._faster(delta, "unison", 3, f"{delta}, SFTP: vs unison", MM_SFTP),
                self._near_rsync(first, f"{first}, SFTP: vs rsync -a", MM_SFTP),
                self._peak(f"{label}, SFTP: sftp-server peak", cases, (MM_SFTP,), remote=True),
            ]
            out += [Target(t.name, t.detail, t.passed, info=True) for t in sftp]
        return out

    def targets_failed(self) -> bool:
        return self.judged and any(t.passed is False and not t.info for t in self.targets())

    def to_text(self) -> str:
        size = f"{self.messages:,} messages ({self.total_bytes / 2**30:.2f} GiB"
        lines = [
            f"mailmirror benchmark: {size}, {self.folders} folders, seed {self.seed}), "
            f"medians of {self.repeat}",
            f"trees under {self.root} ({self.filesystem}); cur/ and new/ mtimes set 10 s back "
            "before each no-change run, for every tool",
            f"{os.cpu_count()} CPUs, load average {self.load[0]:.2f} at start, "
            f"{self.load[1]:.2f} at end, {self.load_max:.2f} at most "
            "(other work on the machine skews every figure)",
        ]
        remote = any(r.remote_peaks_mb for r in self.results.values())
        if remote:
            lines.append(
                "over SSH: B behind a loopback OpenSSH sshd on the same machine (the agent or "
                "server runs there too); remote MB = peak RSS of the agent, sftp-server, "
                "unison -server or rsync --server"
            )
        if self.slow_link:
            lines.append(
                f"through a {self.slow_link} line: sshd and every tool in a network namespace "
                "whose loopback is shaped with `tc tbf` (MTU 1500, no added latency)"
            )
        if self.ssh_connect_seconds:
            lines.append(
                f"`ssh 127.0.0.1 true` through that sshd: median "
                f"{statistics.median(self.ssh_connect_seconds):.3f} s of "
                f"{len(self.ssh_connect_seconds)} (issue 3 quotes 0.29 s; every tool's run "
                "pays it, a slow login shell included)"
            )
        if remote:
            lines.append(
                f"{MM} over SSH: as installed (--keep-connection auto), so the settling sync, "
                "which follows the first copy as a cron run would, keeps its connection and "
                "the no-change and delta runs go through it (docs/remote.md); the harness "
                f"waits 2 s before each of its runs, as the minutes between cron runs would. "
                f"{MM_PLAIN}: --keep-connection 0, every run connecting itself"
            )
        lines += [
            "",
            "| case | tool | median s | ÷ mailmirror | peak MB |"
            + (" remote MB |" if remote else "")
            + " runs s | check |",
            "|---|---|---:|---:|---:|" + ("---:|" if remote else "") + "---|---|",
        ]
        for (case, tool), r in self.results.items():
            median = "-" if r.median is None else f"{r.median:.3f}"
            ratio = self.ratio(case, tool)
            peak = "-" if r.peak_mb is None else f"{r.peak_mb:.1f}"
            runs = " ".join(f"{s:.2f}" for s in r.seconds) or "-"
            runs_wrong = sorted({run for run, _ in r.problems})
            check = r.note or "ok"
            if r.problems:
                check = f"WRONG in runs {_runs(runs_wrong)}" + (f"; {r.note}" if r.note else "")
            ratio_text = "-" if ratio is None else f"{ratio:.2f}"
            far = "-" if r.remote_peak_mb is None else f"{r.remote_peak_mb:.1f}"
            cells = [case, tool, median, ratio_text, peak] + ([far] if remote else [])
            lines.append("| " + " | ".join(cells + [runs, check]) + " |")
        if self.help_seconds:
            help_runs = " ".join(f"{s:.3f}" for s in self.help_seconds)
            lines += ["", f"`mailmirror --help`: {help_runs} s"]
        mode = (
            f"judged at {FULL_SIZE:,} messages"
            if self.judged
            else "informational: judged on the unshaped loopback only"
            if self.slow_link
            else f"informational: judged at {FULL_SIZE:,} messages only"
        )
        issues = ", ".join(
            "issue 3 over SSH" if label == "ssh" else f"issue 2 {label}"
            for label in self.transports
        )
        lines += ["", f"Targets ({issues}), {mode}:"]
        for t in self.targets():
            verdict = "info" if t.info else {True: "PASS", False: "FAIL", None: "n/a "}[t.passed]
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
            "load_average_max": self.load_max,
            "ssh_connect_seconds": self.ssh_connect_seconds,
            "slow_link": self.slow_link,
            "transports": self.transports,
            "results": [
                {
                    "case": r.case,
                    "tool": r.tool,
                    "seconds": r.seconds,
                    "median": r.median,
                    "ratio_to_mailmirror": self.ratio(r.case, r.tool),
                    "peak_mb": r.peak_mb,
                    "note": r.note,
                    "remote_peak_mb": r.remote_peak_mb,
                    "problems": [{"run": run, "problem": text} for run, text in r.problems],
                }
                for r in self.results.values()
            ],
            "help_seconds": self.help_seconds,
            "targets": [
                {
                    "name": t.name,
                    "detail": t.detail,
                    "passed": t.passed,
                    "judged": self.judged and not t.info,
                }
                for t in self.targets()
            ],
            "correct": self.correct(),
            "seconds_total": self.seconds_total,
        }
