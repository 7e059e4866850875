"""A few hadolint rules, checked in Python (hadolint itself is not installed here).

`lint(path)` returns one "FILE:LINE: RULE message" line per problem; [] when clean.
Rules (hadolint ids where one exists):
  DL3006/DL3007  every FROM image has an explicit tag (or digest), and not `latest`
  DL3002         the last USER is set and is not root (by name or uid 0)
  DL3020-URL     no ADD of a URL (COPY a checked file, or RUN curl with a checksum)
  DL3025         ENTRYPOINT/CMD in exec (JSON) form, so signals reach the process
  DL3004         no sudo
  DL3009-ish     apt-get install with --no-install-recommends
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
        buf = ""
    return out


def _expand(word: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), word)


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def lint(path: Path) -> list[str]:
    text = path.read_text()
    ins = parse(text)
    problems: list[str] = []
    say = lambda i, rule, msg: problems.append(f"{path.name}:{i.line}: {rule} {msg}")  # noqa: E731
    build_args: dict[str, str] = {}
    stages: set[str] = set()
    last_user = None
    for i in ins:
        if i.op == "ARG" and "=" in i.args:
            k, v = i.args.split("=", 1)
            build_args[k.strip()] = v.strip().strip('"')
        elif i.op == "FROM":
            words = [w for w in i.args.split() if not w.startswith("--")]
            image = _expand(words[0], build_args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image in stages or image == "scratch":
                continue
            name = image.split("@")[0]
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else None
            if "@sha256:" not in image and not tag:
                say(i, "DL3006", f"FROM {image}: pin a tag (or digest)")
            elif tag == "latest":
                say(i, "DL3007", f"FROM {image}: `latest` is not a pin")
            last_user = None  # USER does not carry over stages
        elif i.op == "USER":
            last_user = i.args.split(":")[0]
        elif i.op == "ADD" and re.search(r"(^|\s)(https?|ftp)://", i.args):
            say(i, "DL3020-URL", "ADD of a URL: download with a pinned checksum instead")
        elif i.op in ("ENTRYPOINT", "CMD") and exec_form(i.args) is None:
            say(i, "DL3025", f"{i.op} not in exec form (a JSON array)")
        elif i.op == "RUN":
            if re.search(r"(^|[;&|]\s*)sudo\s", i.args):
                say(i, "DL3004", "RUN uses sudo")
            for cmd in re.split(r"&&|;", i.args):
                if re.search(r"apt-get\s+(-\S+\s+)*install", cmd) and "--no-install-recommends" not in cmd:
                    say(i, "DL3015", "apt-get install without --no-install-recommends")
    if last_user is None:
        problems.append(f"{path.name}: DL3002 the final stage sets no USER: it would run as root")
    elif last_user in ("root", "0"):
        problems.append(f"{path.name}: DL3002 the final stage's USER is root")
    return problems


def final_stage(path: Path) -> list[Instruction]:
    ins = parse(path.read_text())
    last_from = max(n for n, i in enumerate(ins) if i.op == "FROM")
    return ins[last_from:]


if __name__ == "__main__":
    found = [p for f in sys.argv[1:] for p in lint(Path(f))]
    print("\n".join(found) or "clean")
    sys.exit(1 if found else 0)
