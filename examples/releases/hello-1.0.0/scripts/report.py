"""hello 1.0.0, step "python report": print a report about the agent's Python and write it
as JSON into the step's working directory. Standard library only."""

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--greeting", default="Hello")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    for _ in range(max(1, args.repeat)):
        print(args.greeting)

    report = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "workdir": str(Path.cwd()),
        "step": os.environ.get("TIANGONG_STEP_NAME"),
        "bundle": os.environ.get("TIANGONG_BUNDLE_ID"),
    }
    out = Path.cwd() / "report.json"
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for key, value in sorted(report.items()):
        print(f"{key:>15}: {value}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
