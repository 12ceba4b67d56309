"""Translate flag letters on disk <-> canonical flags, per replica and folder.

Keyword letters `a`-`z` mean what the folder's `dovecot-keywords` says on that replica. A letter
with no name there is untranslatable: it stays on its own replica's file (opaque) and is reported,
never mapped to a keyword it does not mean.
"""

from __future__ import annotations

from mailmirror.maildir.names import SYSTEM_FLAGS, sort_letters
from mailmirror.replica.base import Replica
from mailmirror.sync.model import Flags, Side


class FlagCodec:
    """Caches each (side, folder) keyword map; adds missing keywords on the receiving side."""

    def __init__(self, replicas: dict[Side, Replica]) -> None:
        self.replicas = replicas
        self._maps: dict[tuple[Side, str], dict[str, str]] = {}
        self._decoded: dict[tuple[Side, str, str], tuple[Flags, str]] = {}
        self.problems: list[str] = []
        self._opaque: dict[tuple[Side, str], set[str]] = {}
        self._system: dict[Flags, str] = {}

    def _map(self, side: Side, folder: str) -> dict[str, str]:
        got = self._maps.get((side, folder))
        if got is None:
            got = self.replicas[side].keywords(folder)
            self._maps[(side, folder)] = got
        return got

    def decode(self, side: Side, folder: str, letters: str) -> tuple[Flags, str]:
        """Canonical flags and the opaque (untranslatable or unknown) letters of a name."""
        cache_key = (side, folder, letters)
        hit = self._decoded.get(cache_key)
        if hit is not None:
            return hit
        flags, opaque = set(), []
        for letter in letters:
            if letter in SYSTEM_FLAGS:
                flags.add(letter)
            elif "a" <= letter <= "z":
                name = self._map(side, folder).get(letter)
                if name is None or name in SYSTEM_FLAGS:
                    opaque.append(letter)
                    self._note_opaque(side, folder, letter)
                else:
                    flags.add(name)
            else:
                opaque.append(letter)
        result = (frozenset(flags), "".join(opaque))
        self._decoded[cache_key] = result
        return result

    def _note_opaque(self, side: Side, folder: str, letter: str) -> None:
        seen = self._opaque.setdefault((side, folder), set())
        if letter not in seen:
            seen.add(letter)
            self.problems.append(
                f"keyword letter {letter!r} in {folder} on {self.replicas[side].label} has no "
                "name in dovecot-keywords: left as it is, not copied")

    def encode(self, side: Side, folder: str, flags: Flags) -> str:
        """Letters for `flags` in this folder of this side, adding keywords that are missing."""
        if not flags <= SYSTEM_FLAGS:
            return self._encode(side, folder, flags)
        # system flags only (nearly every message): no keyword file involved, so cacheable
        letters = self._system.get(flags)
        if letters is None:
            letters = self._system[flags] = sort_letters("".join(flags))
        return letters

    def _encode(self, side: Side, folder: str, flags: Flags) -> str:
        letters = [f for f in flags if len(f) == 1 and f in SYSTEM_FLAGS]
        names = {f for f in flags if f not in SYSTEM_FLAGS}
        if names:
            try:
                by_name = self._letters(side, folder, names)
            except (OSError, ValueError) as exc:
                # e.g. the folder is a symbolic link, which its deliveries refuse too
                self.problems.append(f"keywords of {folder} on {self.replicas[side].label}: "
                                     f"{exc}: left unset there")
                return sort_letters("".join(letters))
            for name in sorted(names):
                if name in by_name:
                    letters.append(by_name[name])
                else:
                    self.problems.append(
                        f"keyword {name!r} has no free letter in {folder} on "
                        f"{self.replicas[side].label}: left unset there")
        return sort_letters("".join(letters))

    def _letters(self, side: Side, folder: str, names: set[str]) -> dict[str, str]:
        """name -> letter in this folder, with letters added for the names missing."""
        mapping = self._map(side, folder)
        by_name = {n: letter for letter, n in mapping.items()}
        if not names <= by_name.keys() and not self._opaque.get((side, folder)):
            # letters with no name are in use here: a new letter could collide with them
            mapping = self.replicas[side].add_keywords(folder, names)
            self._maps[(side, folder)] = mapping
            self._decoded = {k: v for k, v in self._decoded.items() if k[:2] != (side, folder)}
            by_name = {n: letter for letter, n in mapping.items()}
        return by_name
