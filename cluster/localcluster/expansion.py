"""Kubelet-style `$(VAR)` expansion of container command, args and env values.

Same rules as k8s.io/kubernetes third_party/forked/golang/expansion: `$(NAME)` becomes the
value of NAME when NAME is defined, and stays as written when it is not; `$$` becomes `$`
(so `$$(NAME)` is the literal `$(NAME)`); any other `$` is kept.
"""

from __future__ import annotations

from collections.abc import Mapping


def expand(text: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:  # unterminated: kept as written
                out.append(text[i:])
                break
            name = text[i + 2 : close]
            out.append(env[name] if name in env else text[i : close + 1])
            i = close + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)
