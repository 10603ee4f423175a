"""Write docs/cli.md from the CLI itself, so the reference cannot drift from the code.

    python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_rag.cli import main

TARGET = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def render() -> str:
    parts = [
        "# CLI reference\n",
        "Generated from the CLI by `python scripts/gen_cli_docs.py`; a test keeps it current.\n",
    ]
    # make_context applies the group's context_settings (e.g. -h): click caches the help
    # option per command, so a bare Context would render differently after other calls.
    width = {"terminal_width": 100, "max_content_width": 100, "resilient_parsing": True}
    ctx = main.make_context("mlflow-rag", [], **width)
    parts.append("```\n" + main.get_help(ctx) + "\n```\n")
    for name in sorted(main.list_commands(ctx)):
        command = main.get_command(ctx, name)
        assert command is not None
        # A command made a context of its own before (no parent: no -h) cached a help option
        # without -h; drop it so the group's settings apply (click >= 8.1.8 caches it).
        if hasattr(command, "_help_option"):
            command._help_option = None
        sub = command.make_context(name, [], parent=ctx, **width)
        parts.append(f"## mlflow-rag {name}\n\n```\n{command.get_help(sub)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        sys.exit(0 if current == text else 1)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
