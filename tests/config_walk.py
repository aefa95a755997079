"""The walk of a run's config through the package, read from the source (no run needed).

Starting at ``fedvssl.main.run(cfg)``, it follows every call that passes a value derived from
the config (the config, a part of it, or anything computed from those: settings, a device, a
``Precision``, a model built from them) into a function, method or class of ``fedvssl``, and
then what that callee does with it, and so on. A *room* is one of ``fedvssl``'s stage folders
(``data``, ``models``, ...) or one of its top-level modules; its *floor* is its stage in
``tests/test_layout.py``. The walk:

- *enters* a room each time a call crosses from one room into another;
- *climbs back up* each time such a call hands a config-derived value back to its caller (the
  caller uses the result, and the callee's result comes from the config): the config went
  down a floor and came back up, to go down again later (``downstream`` asking ``models`` for
  one helper at a time is the pattern this counts). An error raised is not a value handed back.

Calls into ``core`` (errors, atomic files, processes, the run folder's paths), the floor every
stage stands on by design, are not counted.

Static and conservative: a value is config-derived if any name in its expression is; a call
is resolved through the module's imports, ``self``, parameter annotations and local
constructions; what cannot be resolved (attributes of attributes, Hydra's ``instantiate``) is
not followed. ``python tests/config_walk.py`` prints every crossing; ``tests/test_layout.py``
bounds the climbs.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from test_layout import stage

ROOT = Path(__file__).resolve().parents[1]
START = ("fedvssl.main", "run", ("cfg",))
# The floor every stage stands on by design (errors, atomic files, processes, the run folder's
# paths): calls into it are not counted.
INFRASTRUCTURE = {"core"}


@dataclass(frozen=True)
class Crossing:
    """One call from one room into another, with a config-derived argument."""

    caller: str  # module:qualname
    line: int
    callee: str
    climbs: bool  # the caller uses a config-derived result

    @property
    def rooms(self) -> tuple[str, str]:
        return room(self.caller.split(":")[0]), room(self.callee.split(":")[0])


@dataclass
class Module:
    name: str
    tree: ast.Module
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)  # qualname -> def
    classes: set[str] = field(default_factory=set)
    imports: dict[str, str] = field(default_factory=dict)  # local name -> "module" or "module:symbol"


def room(module: str) -> str:
    """``fedvssl.data.video`` -> ``data``; ``fedvssl.main`` -> ``main``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def load(root: Path = ROOT) -> dict[str, Module]:
    files = {}
    for path in (root / "fedvssl").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules = {}
    for name, path in files.items():
        m = Module(name, ast.parse(path.read_text(), str(path)))
        for node in m.tree.body:
            if isinstance(node, ast.FunctionDef):
                m.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                m.classes.add(node.name)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        m.functions[f"{node.name}.{item.name}"] = item
        for node in ast.walk(m.tree):  # imports inside functions too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedvssl"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    m.imports[a.asname or a.name] = sub if sub in files else f"{node.module}:{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("fedvssl") and a.asname:
                        m.imports[a.asname] = a.name
        modules[name] = m
    return modules


class Walk:
    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self.crossings: list[Crossing] = []
        self.returns: dict[tuple[str, str, frozenset[str]], bool] = {}

    def symbol(self, module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
        """Where ``name`` in ``module`` is defined: (module, qualname), following re-exports."""
        m = self.modules.get(module)
        if m is None or depth > 5:
            return None
        if name in m.functions or name in m.classes:
            return module, name
        target = m.imports.get(name)
        if target and ":" in target:
            return self.symbol(*target.split(":"), depth + 1)
        return None

    def callable_of(self, module: str, name: str) -> str | None:
        """The function a call of ``name`` runs: itself, or a class's ``__init__`` (or the class)."""
        found = self.symbol(module, name)
        if found is None:
            return None
        mod, qual = found
        if qual in self.modules[mod].classes:
            init = f"{qual}.__init__"
            return f"{mod}:{init}" if init in self.modules[mod].functions else f"{mod}:{qual}"
        return f"{mod}:{qual}"

    def method(self, cls: tuple[str, str] | None, attr: str) -> str | None:
        if cls is None:
            return None
        mod, qual = cls
        return f"{mod}:{qual}.{attr}" if f"{qual}.{attr}" in self.modules[mod].functions else None

    def resolve(self, call: ast.Call, module: str, cls: str | None, types: dict[str, tuple[str, str]]) -> str | None:
        f = call.func
        if isinstance(f, ast.Name):
            return self.callable_of(module, f.id)
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            owner = f.value.id
            target = self.modules[module].imports.get(owner)
            if target and ":" not in target:  # a module: mod.function(...)
                return self.callable_of(target, f.attr)
            if owner == "self" and cls:
                return self.method((module, cls), f.attr)
            found = self.symbol(module, owner)  # Class.classmethod(...)
            if found and found[1] in self.modules[found[0]].classes:
                return self.method(found, f.attr)
            return self.method(types.get(owner), f.attr)
        return None

    def walk(self, key: str, tainted_params: frozenset[str]) -> bool:
        """Walk ``key`` (module:qualname) with these parameters config-derived; whether its result is."""
        module, qual = key.split(":")
        memo = (module, qual, tainted_params)
        if memo in self.returns:
            return self.returns[memo]
        self.returns[memo] = bool(tainted_params)  # a recursive call: assume what a constructor gives
        fn = self.modules[module].functions.get(qual)
        if fn is None:  # a class without __init__ (a dataclass): its instance holds what it was given
            return bool(tainted_params)
        cls = qual.split(".")[0] if "." in qual else None
        types = self.annotated_types(fn, module)
        tainted = set(tainted_params)
        parents = {child: node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}
        results: dict[ast.Call, bool] = {}
        here: dict[ast.Call, tuple[str, bool]] = {}  # crossings of this function: callee, gives back
        changed = True
        while changed:  # flow-insensitive: repeat until no name becomes config-derived
            changed = False
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and node not in results and self.derived(node, tainted, results):
                    callee = self.resolve(node, module, cls, types)
                    results[node] = self.follow(key, node, callee, tainted, results, here)
                for target, value in assignments(node):
                    if self.derived(value, tainted, results):
                        new = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)} - tainted
                        changed |= bool(new)
                        tainted |= new
                        if isinstance(value, ast.Call) and isinstance(target, ast.Name):
                            found = self.constructed(value, module)
                            if found:
                                types[target.id] = found
        self.record(key, fn, here, parents)
        gives = any(
            isinstance(n, ast.Return) and n.value is not None and self.derived(n.value, tainted, results)
            for n in ast.walk(fn)
        )
        gives = gives or (qual.endswith(".__init__") and bool(tainted_params))
        self.returns[memo] = gives
        return gives

    def record(self, key: str, fn: ast.FunctionDef, here: dict, parents: dict) -> None:
        """This function's crossings; a climb back up is a config-derived result that it passes down again."""
        floor = stage(key.split(":")[0])
        bound: dict[ast.Call, set[str]] = {call: set() for call in here}
        for node in ast.walk(fn):
            for target, value in assignments(node):
                for call in bound.keys() & set(ast.walk(value)):
                    bound[call] |= targets(target)
        for call, (callee, gives) in here.items():
            used = not isinstance(parents.get(call), (ast.Expr, ast.Raise))
            relayed = (
                gives
                and used
                and any(
                    other is not call and stage(other_callee.split(":")[0]) < floor and passes(other, call, bound[call])
                    for other, (other_callee, _) in here.items()
                )
            )
            self.crossings.append(Crossing(key, call.lineno, callee, relayed))

    def follow(self, key, call, callee, tainted, results, here) -> bool:
        """Walk a call's callee with the parameters its config-derived arguments bind; whether it returns one."""
        if callee is None:
            return True  # not ours, or not resolvable: its result is taken as derived
        mod, qual = callee.split(":")
        target = self.modules[mod].functions.get(qual)
        bound: set[str] = set()
        if target is not None:
            params = [a.arg for a in target.args.posonlyargs + target.args.args]
            receiver = isinstance(call.func, ast.Attribute) and "." in qual and not qual.endswith(".__init__")
            if params and params[0] in ("self", "cls"):
                if receiver and self.derived(call.func.value, tainted, results):
                    bound.add(params[0])
                params = params[1:]
            for i, arg in enumerate(call.args):
                if self.derived(arg, tainted, results):
                    if isinstance(arg, ast.Starred) or i >= len(params):
                        bound |= set(params) | {a.arg for a in target.args.kwonlyargs}
                    else:
                        bound.add(params[i])
            for kw in call.keywords:
                if self.derived(kw.value, tainted, results):
                    bound |= {kw.arg} if kw.arg else set(params) | {a.arg for a in target.args.kwonlyargs}
        elif any(self.derived(a, tainted, results) for a in [*call.args, *(k.value for k in call.keywords)]):
            bound.add("*")
        gives = self.walk(callee, frozenset(bound)) if bound else False
        if room(key.split(":")[0]) != room(mod) and room(mod) not in INFRASTRUCTURE:
            here[call] = (callee, gives)
        return gives

    def derived(self, expr: ast.AST, tainted: set[str], results: dict[ast.Call, bool]) -> bool:
        for n in ast.walk(expr):
            if isinstance(n, ast.Name) and n.id in tainted:
                return True
            if isinstance(n, ast.Call) and results.get(n):
                return True
        return False

    def constructed(self, call: ast.Call, module: str) -> tuple[str, str] | None:
        if isinstance(call.func, ast.Name):
            found = self.symbol(module, call.func.id)
            if found and found[1] in self.modules[found[0]].classes:
                return found
        return None

    def annotated_types(self, fn: ast.FunctionDef, module: str) -> dict[str, tuple[str, str]]:
        types = {}
        for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs:
            if isinstance(a.annotation, ast.Name):
                found = self.symbol(module, a.annotation.id)
                if found and found[1] in self.modules[found[0]].classes:
                    types[a.arg] = found
        return types


def dotted(node: ast.AST) -> str | None:
    """``name`` or ``name.attr.attr`` for a name or an attribute chain on one; else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def targets(target: ast.AST) -> set[str]:
    """The names (``x``) and attributes (``self.x``) an assignment to ``target`` binds."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(targets(t) for t in target.elts))
    if isinstance(target, (ast.Starred, ast.Subscript)):
        return targets(target.value)
    name = dotted(target)
    return {name} if name else set()


def passes(call: ast.Call, inner: ast.Call, names: set[str]) -> bool:
    """Whether ``call`` takes ``inner``'s result, directly or through ``names`` (a name, or an
    attribute such as ``self.x``), as an argument or as the object whose method it calls."""
    receiver = [call.func.value] if isinstance(call.func, ast.Attribute) else []
    for arg in [*receiver, *call.args, *(k.value for k in call.keywords)]:
        for n in ast.walk(arg):
            if n is inner or dotted(n) in names:
                return True
    return False


def assignments(node: ast.AST) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) pairs that ``node`` binds."""
    if isinstance(node, ast.Assign):
        return [(t, node.value) for t in node.targets]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
        return [(node.target, node.value)]
    if isinstance(node, (ast.For, ast.comprehension)):
        return [(node.target, node.iter)]
    if isinstance(node, ast.With):
        return [(i.optional_vars, i.context_expr) for i in node.items if i.optional_vars is not None]
    return []


def config_walk(root: Path = ROOT) -> list[Crossing]:
    """Every crossing of the config walk from ``fedvssl.main.run(cfg)``, each call site once."""
    w = Walk(load(root))
    module, qual, params = START
    w.walk(f"{module}:{qual}", frozenset(params))
    return sorted(set(w.crossings), key=lambda c: (c.caller, c.line, c.callee))


def main() -> None:
    crossings = config_walk()
    for c in crossings:
        print(f"{c.caller}:{c.line} -> {c.callee}{'  (climbs back up)' if c.climbs else ''}")
    pairs = Counter(c.rooms for c in crossings if c.climbs)
    print(f"\nenters another room {len(crossings)} times, climbs back up {sum(pairs.values())} times")
    for (a, b), n in pairs.most_common():
        print(f"  {a} <-> {b}: {n}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
