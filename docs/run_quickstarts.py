"""Run every Python example of docs/quickstart/*.md as written (scripts/docs runs this before
building the site, so that a page's code cannot drift from what camkit does)."""

from __future__ import annotations

import re
import time
from pathlib import Path

PAGES = Path(__file__).with_name("quickstart")


def main() -> None:
    for page in sorted(PAGES.glob("*.md")):
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
        own = [block for block in blocks if "--8<--" not in block]  # README's, tested there
        start = time.perf_counter()
        for block in own:
            exec(compile(block, str(page), "exec"), {"__name__": "__quickstart__"})
        print(f"ran {len(own)} examples of {page.name} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
