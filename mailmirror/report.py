"""What users see of a run: a progress bar and summary table on a terminal, JSON with --json,
and nothing but errors under cron (no TTY). rich is imported only when a terminal is there.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mailmirror.errors import MailmirrorError, printable
from mailmirror.sync.engine import ProgressFn, SyncReport
from mailmirror.sync.model import Side


class Reporter:
    def __init__(self, json_out: bool, tty: bool) -> None:
        self.json_out = json_out
        self.tty = tty and not json_out

    def notice(self, line: str) -> None:
        """One line worth telling even under cron (it changes what the user should expect)."""
        print(f"mailmirror: {printable(line)}", file=sys.stderr)

    @contextmanager
    def progress(self) -> Iterator[ProgressFn | None]:
        if not self.tty:
            yield None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      transient=True) as bar:
            tasks: dict[str, int] = {}

            def update(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            yield update

    def finish(self, reports: Sequence[SyncReport | MailmirrorError]) -> None:
        """One JSON object (a "runs" list when a profile synced several pairs, where a pair
        that failed is {"outcome": "failed", "error": ..., "exit": ...}), or text (a failed
        pair's line was said when it failed)."""
        if self.json_out:
            outs = []
            for report in reports:
                if isinstance(report, MailmirrorError):
                    outs.append({"outcome": "failed", "error": str(report),
                                 "exit": report.exit_code})
                    continue
                out = report.to_json()
                if report.dry_run and report.plan is not None:
                    out["plan"] = [_action_json(a) for a in report.plan.actions]
                outs.append(out)
            print(json.dumps(outs[0] if len(outs) == 1 else {"runs": outs}))
            return
        for report in reports:
            if isinstance(report, SyncReport):
                self._finish_text(report)

    def _finish_text(self, report: SyncReport) -> None:
        if report.dry_run and report.plan is not None:
            for action in report.plan.actions:
                print(printable(_action_text(action)))
        for line in report.skipped:
            print(f"mailmirror: skipped: {printable(line)}", file=sys.stderr)
        if not self.tty:
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console(stderr=True)
        for line in ([f"note: {note}" for note in report.notices]
                     + [f"conflict: {c.key}: {c.kind}; {c.resolution}"
                        for c in report.conflicts]):
            console.print(printable(line), markup=False, highlight=False)
        labels = (printable(report.labels[s]) for s in (Side.A, Side.B))
        table = Table(title=escape(" <-> ".join(labels)))
        table.add_column("action")
        table.add_column("count", justify="right")
        for name, count in sorted(report.counts.items()):
            table.add_row(name, str(count))
        if not report.counts:
            table.add_row("in sync", "-")
        console.print(table)
        console.print(f"{report.bytes} bytes copied in {report.seconds:.2f} s"
                      + (" (dry run: nothing changed)" if report.dry_run else ""))


def _action_json(action: object) -> dict:
    out: dict = {"action": type(action).__name__.lower(), "key": action.key}  # type: ignore
    for name in ("source", "side"):
        value = getattr(action, name, None)
        if value is not None:
            out[name] = value.value
    entry = getattr(action, "entry", None)
    if entry is not None:
        out.update(folder=entry.folder, subdir=entry.subdir, flags=sorted(entry.flags))
    return out


def _action_text(action: object) -> str:
    j = _action_json(action)
    where = f" -> {j['folder']}/{j['subdir']} [{' '.join(j['flags'])}]" if "folder" in j else ""
    return f"{j['action']} {j.get('side', '')} {j['key']}{where}"


def print_status(runs: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="mailmirror pairs")
    for column in ("pair", "replicas", "messages", "last run", "outcome", "changes"):
        table.add_column(column)
    for run in runs:
        labels = " <-> ".join(label or rid[:8] for label, rid in zip(run["labels"],
                                                                     run["replicas"],
                                                                     strict=True))
        when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["last_started"]))
                if run["last_started"] else "never")
        counts = run["summary"].get("counts", {})
        changes = ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"
        table.add_row(str(run["pair"]), escape(printable(labels)), str(run["messages"]), when,
                      run["outcome"], changes)
    Console().print(table)
