"""Benchmark harness: mailmirror side by side with unison, rsync and doveadm sync.

`bench.gen` builds deterministic Maildir++ trees and the delta change set, `bench.maildir` lists
and compares trees, `bench.tools` knows how to run each tool, `bench.run` is the command.
"""
