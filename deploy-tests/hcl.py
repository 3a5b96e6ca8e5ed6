"""Reading our Terraform with python-hcl2, and resolving the few expression forms the examples
pass to the sidecar module (literals, `var.x`, `module.destinations.<output>`, and a
resource's literal attribute), so a test can compute the module's inputs for each example
without running Terraform. Anything else raises `Unresolvable`: keep the examples' module
arguments that simple, or teach this file the new form.

python-hcl2 (8.x) keeps string literals quoted (`"\"text\""`) and writes any other expression
as `"${expr}"`; block labels are quoted too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import hcl2

Ref = Callable[[str], object]


class Unresolvable(Exception):
    pass


def load_file(path: Path) -> dict:
    with open(path) as f:
        return hcl2.load(f)


def load_dir(directory: Path) -> dict[str, list]:
    """Every top-level block/attribute list of every .tf file in `directory`, merged."""
    merged: dict[str, list] = {}
    for tf in sorted(directory.glob("*.tf")):
        for key, items in load_file(tf).items():
            if key.startswith("__"):  # __comments__
                continue
            merged.setdefault(key, []).extend(items if isinstance(items, list) else [items])
    return merged


def label(raw: str) -> str:
    return raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw


def blocks(parsed: dict[str, list], kind: str) -> dict[str, dict]:
    """`{label: body}` of the one-label blocks of `kind` (variable, output, module)."""
    out: dict[str, dict] = {}
    for item in parsed.get(kind, []):
        for name, body in item.items():
            if not name.startswith("__"):
                out[label(name)] = body
    return out


def resources(parsed: dict[str, list], kind: str = "resource") -> dict[str, dict]:
    """`{"type.name": body}` of two-label blocks (resource, data)."""
    out: dict[str, dict] = {}
    for item in parsed.get(kind, []):
        for rtype, named in item.items():
            if rtype.startswith("__"):
                continue
            for name, body in named.items():
                if not name.startswith("__"):
                    out[f"{label(rtype)}.{label(name)}"] = body
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def unquote(raw: str, ref: Ref) -> str:
    """An HCL quoted string: escapes, `$${`/`%%{`, and `${ref}` interpolations."""
    if not (len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"'):
        raise Unresolvable(f"not a string literal: {raw!r}")
    s = raw[1:-1]
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPES:
            out.append(_ESCAPES[s[i + 1]])
            i += 2
        elif s.startswith("$${", i) or s.startswith("%%{", i):
            out.append(s[i + 1 : i + 3])
            i += 3
        elif s.startswith("%{", i):
            raise Unresolvable(f"template directive in a string: {raw!r}")
        elif s.startswith("${", i):
            end = s.index("}", i)
            value = ref(s[i + 2 : end].strip())
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise Unresolvable(f"cannot interpolate {value!r} in {raw!r}")
            out.append(str(value))
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def value(raw: object, ref: Ref) -> object:
    """The value of an attribute as python-hcl2 returns it."""
    if isinstance(raw, (bool, int, float)) or raw is None:
        return raw
    if isinstance(raw, list):
        return [value(x, ref) for x in raw]
    if isinstance(raw, dict):
        return {label(k): value(v, ref) for k, v in raw.items() if not k.startswith("__")}
    if isinstance(raw, str):
        if raw.startswith('"'):
            return unquote(raw, ref)
        m = re.fullmatch(r"\$\{([^{}]*)\}", raw)
        if m:
            return ref(m.group(1).strip())
    raise Unresolvable(f"unsupported expression: {raw!r}")


def no_refs(expr: str) -> object:
    raise Unresolvable(f"a reference where a literal is expected: {expr}")


def variable_defaults(parsed: dict[str, list]) -> dict[str, object]:
    """`{name: default}` of the variables that have one."""
    return {
        name: value(body["default"], no_refs)
        for name, body in blocks(parsed, "variable").items()
        if "default" in body
    }
