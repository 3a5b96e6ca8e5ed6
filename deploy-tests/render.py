"""Prints the router config a Terraform example renders into LOGFERRY_CONFIG, as templatefile
does (see tftemplate.py), for tests outside this suite (localstack-tests/test_deploy.py runs
it against LocalStack):

    ~/.cache/logferry/deploy-venv/bin/python deploy-tests/render.py ecs-fargate
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tftemplate  # noqa: E402
from test_terraform import TEMPLATE, TF, sidecar_inputs, template_vars  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (TF / "examples" / argv[0]).is_dir():
        print(f"usage: render.py EXAMPLE (one of {sorted(p.name for p in (TF / 'examples').iterdir())})", file=sys.stderr)
        return 2
    sys.stdout.write(tftemplate.render(TEMPLATE.read_text(), template_vars(sidecar_inputs(TF / "examples" / argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
