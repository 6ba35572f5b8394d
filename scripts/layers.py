#!/usr/bin/env python3
"""Which source file calls which, from the object files of a build.

    scripts/layers.py [--graph] OBJ.o...

An edge A -> B means A.o refers to a symbol (function or data) that B.o
defines. Prints the circles (files that call each other, directly or
round about) and exits 1 if there is one; --graph prints every edge too.
Circles make a layer impossible to read, test or replace alone: each file
should call only those "below" it (tests/arch/test_layers.sh).
"""
import os
import subprocess
import sys


def graph(objs):
    defs, uses = {}, {}
    for o in objs:
        name = os.path.basename(o)
        if name.endswith('.o'):
            name = name[:-2]
        out = subprocess.run(['nm', o], capture_output=True, text=True,
                             check=True).stdout
        uses[name] = set()
        for line in out.splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == 'U':
                uses[name].add(f[1])
            elif len(f) == 3 and f[1] in 'TDBRCV':
                defs[f[2]] = name
    edges = {n: {} for n in uses}
    for a, syms in uses.items():
        for s in syms:
            b = defs.get(s)
            if b and b != a:
                edges[a].setdefault(b, []).append(s)
    return edges


def circles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv):
    show = '--graph' in argv
    objs = [a for a in argv if a != '--graph']
    if not objs:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    edges = graph(objs)
    if show:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                syms = sorted(edges[a][b])
                print(f"{a} -> {b}: {', '.join(syms[:5])}"
                      f"{' ...' if len(syms) > 5 else ''}")
    found = circles(edges)
    for comp in found:
        inner = [f"{a} -> {b} ({', '.join(sorted(edges[a][b])[:3])})"
                 for a in comp for b in sorted(edges[a]) if b in comp]
        print(f"circle: {' '.join(comp)}: {'; '.join(inner)}")
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
