"""The module graph of `src/` has no cycles (the architecture rule "no module imports one that
imports it back", ARCHITECTURE.md).

Reads every `crate::<module>` path in code (comments, doc links and test modules excluded) and
reports each strongly connected set of top-level modules. `lib.rs`, `bin/` and `python/` (the
shells around the core) are not part of the core graph. Exit status 1 on a cycle.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SHELLS = {"lib", "bin", "python", "cli"}


def module_graph(src: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.rs")):
        top = path.relative_to(src).parts[0].removesuffix(".rs")
        if top in SHELLS:
            continue
        text = path.read_text()
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        code = "\n".join(line.split("//")[0] for line in text.splitlines())
        deps = graph.setdefault(top, set())
        deps.update(m for m in re.findall(r"\bcrate::([a-z_]+)", code) if m != top)
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    src = Path(__file__).resolve().parents[2] / "src"
    graph = module_graph(src)
    bad = cycles(graph)
    for component in bad:
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        print(f"import cycle between {', '.join(component)}: {'; '.join(edges)}", file=sys.stderr)
    if not bad:
        print(f"module graph: {len(graph)} core modules, no import cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
