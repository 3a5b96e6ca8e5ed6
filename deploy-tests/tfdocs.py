"""terraform-docs-style tables for our modules and examples, generated from the .tf files.

    deploy-venv/bin/python deploy-tests/tfdocs.py          # rewrite the generated sections
    deploy-venv/bin/python deploy-tests/tfdocs.py --check  # exit 1 if any is out of date

Each README keeps its hand-written text; the part between `<!-- BEGIN_TF_DOCS -->` and
`<!-- END_TF_DOCS -->` (terraform-docs' own markers, so the real tool can take over) holds
Requirements, Providers, Modules, Inputs and Outputs. test_terraform.py fails when a README's
section differs from what this script generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hcl

BEGIN, END = "<!-- BEGIN_TF_DOCS -->", "<!-- END_TF_DOCS -->"
REPO = Path(__file__).resolve().parent.parent
ROOTS = sorted(p for kind in ("modules", "examples") for p in (REPO / "terraform" / kind).iterdir() if p.is_dir())


def _expr(raw: object) -> str:
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}"):
        return raw[2:-1]
    return str(raw)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(body: dict) -> str:
    if "default" not in body:
        return "n/a"
    value = hcl.value(body["default"], hcl.no_refs)
    return "`" + _cell(json.dumps(value)) + "`"


def generate(root: Path) -> str:
    parsed = hcl.load_dir(root)
    lines = [BEGIN, "## Requirements", "", "| Name | Version |", "|------|---------|"]
    tf = parsed["terraform"][0]
    lines.append(f"| terraform | `{hcl.value(tf['required_version'], hcl.no_refs)}` |")
    for name, spec in tf["required_providers"][0].items():
        if not name.startswith("__"):
            lines.append(f"| {name} | `{hcl.value(spec['version'], hcl.no_refs)}` |")
    modules = hcl.blocks(parsed, "module")
    if modules:
        lines += ["", "## Modules", "", "| Name | Source |", "|------|--------|"]
        for name, body in modules.items():
            lines.append(f"| {name} | `{hcl.value(body['source'], hcl.no_refs)}` |")
    res = hcl.resources(parsed)
    if res:
        lines += ["", "## Resources", "", "| Name | Type |", "|------|------|"]
        for name in res:
            lines.append(f"| `{name}` | resource |")
    lines += ["", "## Inputs", "", "| Name | Description | Type | Default | Required |",
              "|------|-------------|------|---------|:--------:|"]
    for name, body in hcl.blocks(parsed, "variable").items():
        desc = _cell(hcl.value(body.get("description", '""'), hcl.no_refs))
        kind = _cell(_expr(body.get("type", "any")))
        lines.append(f"| {name} | {desc} | `{kind}` | {_default(body)} | {'no' if 'default' in body else 'yes'} |")
    lines += ["", "## Outputs", "", "| Name | Description |", "|------|-------------|"]
    for name, body in hcl.blocks(parsed, "output").items():
        lines.append(f"| {name} | {_cell(hcl.value(body.get('description', '\"\"'), hcl.no_refs))} |")
    lines.append(END)
    return "\n".join(lines)


def current(readme: str) -> str | None:
    if BEGIN not in readme or END not in readme:
        return None
    return readme[readme.index(BEGIN) : readme.index(END) + len(END)]


def update(root: Path) -> bool:
    """Rewrites the section; True if it changed."""
    path = root / "README.md"
    text = path.read_text() if path.exists() else f"# {root.name}\n\n{BEGIN}\n{END}\n"
    old = current(text)
    new = generate(root)
    if old == new:
        return False
    text = text.replace(old, new) if old else text.rstrip("\n") + "\n\n" + new + "\n"
    path.write_text(text)
    return True


def main(argv: list[str]) -> int:
    stale = []
    for root in ROOTS:
        readme = root / "README.md"
        if "--check" in argv:
            if not readme.exists() or current(readme.read_text()) != generate(root):
                stale.append(root)
        elif update(root):
            print(f"updated {readme.relative_to(REPO)}")
    for root in stale:
        print(f"out of date: {(root / 'README.md').relative_to(REPO)} (run deploy-tests/tfdocs.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
