"""Read a Dockerfile and a .dockerignore without a Docker engine: what the build would copy, and whether
the build context holds it."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper-case instruction name: FROM, COPY, RUN, ..."""
    args: str
    """Everything after the keyword, continuation lines joined."""
    line: int
    """1-based line where the instruction starts."""


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (comments, parser directives and blank lines dropped)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped by Docker too
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(p for p in pending if p).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    if pending:
        raise ValueError(f"Dockerfile ends inside a continued instruction (line {start})")
    return instructions


def copy_sources(instructions: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    """Each COPY/ADD from the build context (not ``--from`` another stage) with its source paths."""
    found = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        found.append((ins, paths[:-1]))
    return found


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    """``ENV`` settings of the last stage (``KEY=value`` form)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            env = {}
        elif ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"line {ins.line}: use the ENV KEY=value form")
                env[key] = value
    return env


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            defaults[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return defaults


# --- .dockerignore --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    pattern: re.Pattern[str]
    exception: bool
    text: str


def parse_dockerignore(text: str) -> list[IgnoreRule]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        body = line[1:].strip() if exception else line
        body = body.strip("/")
        rules.append(IgnoreRule(re.compile(_glob_regex(body)), exception, line))
    return rules


def _glob_regex(pattern: str) -> str:
    """Docker's pattern language (Go filepath.Match plus ``**``) as an anchored regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body[:1] in "!^" and body else body) + "]")
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def is_ignored(path: str, rules: list[IgnoreRule]) -> bool:
    """Whether Docker leaves ``path`` (relative, '/'-separated) out of the build context.

    As in Docker: the last rule matching the path or one of its parent folders decides.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        if any(rule.pattern.match(c) for c in candidates):
            ignored = not rule.exception
    return ignored


def copy_problems(dockerfile: Path, context: Path, dockerignore: Path | None = None) -> list[str]:
    """COPY/ADD sources that do not exist in the context or that .dockerignore leaves out."""
    rules = parse_dockerignore(dockerignore.read_text()) if dockerignore and dockerignore.exists() else []
    problems = []
    for ins, sources in copy_sources(parse(dockerfile.read_text())):
        copied = 0
        for source in sources:
            if any(c in source for c in "*?["):
                # A wildcard may match nothing (the idiom for optional files) as long as the
                # instruction as a whole copies something, as in Docker.
                hits = sorted(context.glob(source.strip("/")))
            else:
                path = context / source.strip("/")
                if not path.exists():
                    problems.append(
                        f"line {ins.line}: {ins.keyword} source {source!r} does not exist in {context}"
                    )
                    continue
                hits = [path]
            copied += len(hits)
            for hit in hits:
                problems.extend(_ignored_problems(ins, hit, context, rules))
        if not copied:
            problems.append(f"line {ins.line}: {ins.keyword} copies nothing from {context}")
    return problems


def _ignored_problems(ins: Instruction, path: Path, context: Path, rules: list[IgnoreRule]) -> list[str]:
    relative = path.relative_to(context).as_posix()
    if is_ignored(relative, rules):
        return [f"line {ins.line}: {ins.keyword} source {relative!r} is excluded by .dockerignore"]
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        kept = [f for f in files if not is_ignored(f.relative_to(context).as_posix(), rules)]
        if files and not kept:
            return [f"line {ins.line}: every file under {relative!r} is excluded by .dockerignore"]
    return []
