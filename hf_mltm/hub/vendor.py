"""Vendoring: copy the hf_mltm modules a saved model needs into its folder, as flat files with relative imports.

transformers loads remote code (``trust_remote_code=True``) from the files of a model folder. It copies the module
an ``auto_map`` entry names and, recursively, every module that file imports *relatively* from the same folder
(``from .x import y``); absolute imports must be installed packages. A family's modeling file imports
``hf_mltm.ot``, ``hf_mltm.models.towers``, ``hf_mltm.audio``, ... absolutely, so a folder written by
``save_pretrained`` needs ``hf_mltm`` installed. This module makes it self-contained:

1. It follows the import graph from the entry modules (the family's configuration, modeling, processing and
   feature-extraction/image-processing modules), reading the import statements with `ast`.
2. Every reached module becomes one flat file (`vendored_file_name`): a model-family file keeps its name
   (``hf_mltm/models/mltm/modeling_mltm.py`` -> ``modeling_mltm.py``, so the ``auto_map`` that ``save_pretrained``
   writes stays valid), any other module is named by its package path (``hf_mltm/ot/sinkhorn.py`` ->
   ``ot_sinkhorn.py``, ``hf_mltm/models/panns/__init__.py`` -> ``models_panns.py``).
3. Its import statements of ``hf_mltm`` modules, absolute or relative, are rewritten into relative imports of those
   files (`rewrite_imports`); every other line is kept as it is, licence and attribution headers included, and a
   one-line comment at the top says where the file comes from.

Names imported from a package (``from hf_mltm.ot import sinkhorn``) are traced through the package's
``__init__.py`` re-exports to the module that defines them (``from .ot_sinkhorn import sinkhorn``), so a package
``__init__`` is vendored only when it is imported for its side effects (``import hf_mltm.models.panns``, which
registers the ``panns`` model type with the Auto classes) or defines the name itself.

Forms that cannot be expressed as relative imports of flat files raise a `ValueError` naming the file and line:
``import hf_mltm.x as y``, attribute access through an imported package (``hf_mltm.ot.sinkhorn(...)``), importing a
module object (``from hf_mltm import ot``) and star imports from a package.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "VendoredModule",
    "collect_vendored_modules",
    "module_source",
    "rewrite_imports",
    "vendored_file_name",
    "write_vendored_modules",
]

# Long rewritten ``from .x import a, b, ...`` statements are wrapped, one name per line, beyond this width.
_MAX_LINE = 110


@dataclass(frozen=True)
class VendoredModule:
    """One module copied into an exported folder.

    Args:
        module (`str`): dotted name in the package, e.g. ``"hf_mltm.ot.sinkhorn"``.
        source (`Path`): the module's file.
        file_name (`str`): the flat file it becomes, e.g. ``"ot_sinkhorn.py"``.
        text (`str`): the rewritten source.
        imports (`tuple[str, ...]`): the package modules it imports (dotted names), in order of appearance.
    """

    module: str
    source: Path
    file_name: str
    text: str
    imports: tuple[str, ...] = field(default=())


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package={package!r} is not an importable package; install it or pass package_dir.")
    return Path(next(iter(spec.submodule_search_locations)))


def module_source(module: str, package: str = "hf_mltm", package_dir: str | Path | None = None) -> tuple[Path, bool]:
    """The file of a package module, without importing it.

    Args:
        module (`str`): dotted name starting with ``package``.
        package (`str`, defaults to ``"hf_mltm"``): the top-level package.
        package_dir (`str` or `Path`, *optional*): the package's folder (default: where ``package`` is installed).

    Returns:
        `tuple[Path, bool]`: the ``.py`` file and whether it is a package's ``__init__.py``.

    Raises:
        ValueError: ``module`` is outside ``package`` or has no source file.
    """
    parts = module.split(".")
    if parts[0] != package:
        raise ValueError(f"module={module!r} is not part of package {package!r}.")
    root = Path(package_dir) if package_dir is not None else _package_dir(package)
    base = root.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    raise ValueError(f"module={module!r} has no source file under {root} (looked for {base}.py and "
                     f"{base}/__init__.py).")


def vendored_file_name(module: str, package: str = "hf_mltm") -> str:
    """The flat file name a package module gets in an exported folder.

    A module of a model family (``<package>.models.<family>.<file>``) keeps its file name: family files are named
    ``<role>_<family>.py`` already, and the ``auto_map`` entries written by ``save_pretrained`` name them so. Any
    other module is named by its path below the package, dots replaced by underscores.

    Args:
        module (`str`): dotted module name, e.g. ``"hf_mltm.ot.sinkhorn"`` or ``"hf_mltm.models.panns"`` (a
            package: its ``__init__.py``).
        package (`str`, defaults to ``"hf_mltm"``): the top-level package.

    Returns:
        `str`: e.g. ``"ot_sinkhorn.py"``, ``"models_panns.py"``, ``"modeling_mltm.py"``.

    Raises:
        ValueError: ``module`` is the package itself or outside it.

    Example:

    ```python
    >>> vendored_file_name("hf_mltm.ot._utils"), vendored_file_name("hf_mltm.models.mltm.modeling_mltm")
    ('ot__utils.py', 'modeling_mltm.py')

    ```
    """
    parts = module.split(".")
    if parts[0] != package or len(parts) == 1:
        raise ValueError(f"module={module!r} must be a module inside package {package!r} (the whole package "
                         f"cannot be vendored: import the names you need from its modules).")
    rest = parts[1:]
    if len(rest) == 3 and rest[0] == "models":
        return f"{rest[2]}.py"
    return "_".join(rest) + ".py"


# ----------------------------------------------------------------------------------------------------------------------
# Resolving imports


class _Resolver:
    """Resolves import statements of package modules to the package modules they load (cached per module)."""

    def __init__(self, package: str, package_dir: Path) -> None:
        self.package, self.package_dir = package, package_dir
        self._trees: dict[str, tuple[ast.Module, bool, Path]] = {}

    def exists(self, module: str) -> bool:
        try:
            module_source(module, self.package, self.package_dir)
        except ValueError:
            return False
        return True

    def tree(self, module: str) -> tuple[ast.Module, bool, Path]:
        if module not in self._trees:
            path, is_package = module_source(module, self.package, self.package_dir)
            self._trees[module] = (ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), is_package, path)
        return self._trees[module]

    def inside(self, module: str | None) -> bool:
        return module is not None and (module == self.package or module.startswith(self.package + "."))

    def absolute(self, node: ast.ImportFrom, module: str, is_package: bool, where: str) -> str:
        """The dotted module a ``from ... import`` statement reads from."""
        if node.level == 0:
            return node.module or ""
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 >= len(base):
            raise ValueError(f"{where}: the relative import (level {node.level}) goes above package "
                             f"{self.package!r}; vendoring needs every import to stay inside it.")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def definer(self, package_module: str, name: str, where: str, seen: frozenset[str] = frozenset()) -> tuple[str, str]:
        """The module that defines ``name`` imported from package ``package_module`` and its name there.

        Follows ``from .x import name [as alias]`` re-exports of the package's ``__init__.py``; a name the
        ``__init__`` defines itself (or re-exports from outside the package) resolves to the package itself.
        """
        if package_module in seen:
            raise ValueError(f"{where}: circular re-export of {name!r} through {package_module!r}.")
        tree, _, _ = self.tree(package_module)
        # As for Python's own `from package import name`, the last binding of the name in __init__ wins (a function
        # re-exported under its submodule's name, `from .sinkhorn import sinkhorn`, shadows the submodule).
        found: tuple[str, str] | None = None
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) != name:
                        continue
                    source = self.absolute(node, package_module, True, where)
                    if not self.inside(source):
                        found = (package_module, name)
                    elif self.tree(source)[1]:
                        found = self.definer(source, alias.name, where, seen | {package_module})
                    else:
                        found = (source, alias.name)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
                found = (package_module, name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                    found = (package_module, name)
            elif isinstance(node, ast.Import):
                if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                    found = (package_module, name)
        if found is not None:
            return found
        if self.exists(f"{package_module}.{name}"):
            raise ValueError(f"{where}: `from {package_module} import {name}` imports a module object; vendored "
                             f"files can only import names from modules (write `from {package_module}.{name} import "
                             f"...`).")
        raise ValueError(f"{where}: package {package_module!r} has no name {name!r} (checked its __init__.py).")


# ----------------------------------------------------------------------------------------------------------------------
# Rewriting one module


def _statement_span(lines: list[str], node: ast.stmt, where: str) -> tuple[str, str]:
    """The indentation and trailing comment of an import statement that must occupy whole lines."""
    first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
    indent, after = first[: node.col_offset], last[node.end_col_offset:]
    if indent.strip() or (after.strip() and not after.strip().startswith("#")):
        raise ValueError(f"{where}: an import statement shares its line with other code; put it on its own line "
                         f"before vendoring.")
    comment = after.strip()
    return indent, comment


def _format_from(module: str, names: Sequence[tuple[str, str | None]], indent: str, comment: str) -> str:
    parts = [name if alias in (None, name) else f"{name} as {alias}" for name, alias in names]
    suffix = f"  {comment}" if comment else ""
    line = f"{indent}from .{module} import {', '.join(parts)}{suffix}"
    if len(line) <= _MAX_LINE or len(parts) == 1:
        return line
    body = "".join(f"{indent}    {part},\n" for part in parts)
    return f"{indent}from .{module} import ({suffix}\n{body}{indent})"


def _uses_name(tree: ast.Module, name: str) -> bool:
    return any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(tree))


def rewrite_imports(
    source: str,
    module: str,
    *,
    is_package: bool = False,
    package: str = "hf_mltm",
    package_dir: str | Path | None = None,
    file_name: str | None = None,
) -> tuple[str, list[str]]:
    """Rewrite the package imports of one module into relative imports of vendored flat files.

    Only import statements are changed, each over exactly the lines it spans; everything else (docstrings,
    comments, licence headers, code) is kept byte for byte. A statement's indentation is kept (imports inside
    functions stay inside them) and so is its trailing comment.

    Args:
        source (`str`): the module's source code.
        module (`str`): its dotted name (to resolve relative imports), e.g. ``"hf_mltm.ot.sinkhorn"``.
        is_package (`bool`, defaults to `False`): whether ``source`` is a package's ``__init__.py``.
        package (`str`, defaults to ``"hf_mltm"``): the package whose imports are rewritten.
        package_dir (`str` or `Path`, *optional*): the package's folder (default: where it is installed).
        file_name (`str`, *optional*): the file named in error messages (default: ``module``).

    Returns:
        `tuple[str, list[str]]`: the rewritten source and the package modules it imports (dotted, unique, in order
        of appearance), i.e. the files that must be vendored beside it.

    Raises:
        ValueError: an import that relative imports of flat files cannot express (see the module docstring), a
            relative import leaving the package, or a name the package does not define. The message names the file
            and line.

    Example:

    ```python
    >>> text, needed = rewrite_imports("from hf_mltm.ot import sinkhorn\\n", "hf_mltm.models.demo")
    >>> text, needed
    ('from .ot_sinkhorn import sinkhorn\\n', ['hf_mltm.ot.sinkhorn'])

    ```
    """
    resolver = _Resolver(package, Path(package_dir) if package_dir is not None else _package_dir(package))
    return _rewrite(source, module, is_package, resolver, file_name or module)


def _rewrite(source: str, module: str, is_package: bool, resolver: _Resolver, file_name: str) -> tuple[str, list[str]]:
    tree = ast.parse(source, filename=file_name)
    lines = source.splitlines(keepends=True)
    replacements: dict[int, tuple[int, str]] = {}  # first line (1-based) -> (last line, new text)
    needed: list[str] = []

    def need(name: str) -> str:
        if name not in needed:
            needed.append(name)
        return vendored_file_name(name, resolver.package)[: -len(".py")]

    imports = sorted((node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)),
                     key=lambda node: (node.lineno, node.col_offset))
    for node in imports:
        where = f"{file_name}:{node.lineno}"
        if isinstance(node, ast.Import):
            ours = [alias for alias in node.names if resolver.inside(alias.name)]
            if not ours:
                continue
            indent, comment = _statement_span(lines, node, where)
            out = []
            others = [alias for alias in node.names if not resolver.inside(alias.name)]
            if others:
                out.append(indent + "import " + ", ".join(
                    alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in others))
            for alias in ours:
                if alias.asname is not None:
                    raise ValueError(f"{where}: `import {alias.name} as {alias.asname}` binds a module object; "
                                     f"import the names you need instead (`from {alias.name} import ...`).")
                if _uses_name(tree, resolver.package):
                    raise ValueError(f"{where}: `import {alias.name}` is used through attribute access "
                                     f"(`{resolver.package}.`...); import the names you need instead.")
                resolver.tree(alias.name)  # raises when it does not exist
                flat = need(alias.name)
                # Imported for its side effects (e.g. Auto-class registrations): keep the import, bind nothing useful.
                note = comment or "# noqa: F401"
                out.append(f"{indent}from .{flat} import __name__ as _{flat}_module  {note}")
            replacements[node.lineno] = (node.end_lineno, "\n".join(out) + "\n")
            continue

        target = resolver.absolute(node, module, is_package, where)
        if not resolver.inside(target):
            continue
        indent, comment = _statement_span(lines, node, where)
        _, target_is_package, _ = resolver.tree(target) if resolver.exists(target) else (None, None, None)
        if target_is_package is None:
            raise ValueError(f"{where}: `{target}` is not a module of package {resolver.package!r}.")
        groups: dict[str, list[tuple[str, str | None]]] = {}
        for alias in node.names:
            if alias.name == "*":
                if target_is_package:
                    raise ValueError(f"{where}: `from {target} import *` cannot be traced to modules; import the "
                                     f"names you need.")
                groups.setdefault(target, []).append(("*", None))
                continue
            if target_is_package:
                definer, original = resolver.definer(target, alias.name, where)
            else:
                definer, original = target, alias.name
            groups.setdefault(definer, []).append((original, alias.asname or alias.name))
        statements = [_format_from(need(definer), names, indent, comment if i == len(groups) - 1 else "")
                      for i, (definer, names) in enumerate(groups.items())]
        # A sibling import that already names its vendored file (``from .configuration_mltm import X`` inside the
        # family) keeps its original formatting.
        if not (node.level == 1 and not target_is_package and node.module == need(target)):
            replacements[node.lineno] = (node.end_lineno, "\n".join(statements) + "\n")

    out_lines: list[str] = []
    index = 1
    while index <= len(lines):
        if index in replacements:
            last, text = replacements[index]
            out_lines.append(text)
            index = last + 1
        else:
            out_lines.append(lines[index - 1])
            index += 1
    return "".join(out_lines), needed


# ----------------------------------------------------------------------------------------------------------------------
# The closure


def collect_vendored_modules(
    entry_modules: Iterable[str],
    *,
    package: str = "hf_mltm",
    package_dir: str | Path | None = None,
    extra_imports: dict[str, Sequence[str]] | None = None,
    version: str | None = None,
) -> dict[str, VendoredModule]:
    """Every package module the entry modules need, each rewritten as a flat file.

    Args:
        entry_modules (`Iterable[str]`): dotted names the exported folder's ``auto_map`` points at (configuration,
            modeling, processing, feature extraction/image processing).
        package (`str`, defaults to ``"hf_mltm"``): the package that is vendored.
        package_dir (`str` or `Path`, *optional*): its folder (default: where it is installed).
        extra_imports (`dict[str, Sequence[str]]`, *optional*): package modules to import, for their side effects,
            from an entry module: ``{"hf_mltm.models.omit.configuration_omit": ["hf_mltm.models.efficientnet_lite"]}``
            makes the vendored configuration register the tower family its checkpoint's sub-config uses. A line
            is added after the module's last top-level import; modules it already reaches are skipped.
        version (`str`, *optional*): the package version named in the header comment.

    Returns:
        `dict[str, VendoredModule]`: by dotted module name, in discovery order (entry modules first).

    Raises:
        ValueError: an unsupported import (`rewrite_imports`) or two modules that would get the same file name.
    """
    root = Path(package_dir) if package_dir is not None else _package_dir(package)
    resolver = _Resolver(package, root)
    extra_imports = {key: list(value) for key, value in (extra_imports or {}).items()}
    queue = list(dict.fromkeys(entry_modules))
    result: dict[str, VendoredModule] = {}
    names: dict[str, str] = {}
    while queue:
        module = queue.pop(0)
        if module in result:
            continue
        path, is_package = module_source(module, package, root)
        file_name = vendored_file_name(module, package)
        if names.setdefault(file_name, module) != module:
            raise ValueError(f"modules {names[file_name]!r} and {module!r} would both be vendored as {file_name}; "
                             f"rename one of them.")
        relative = path.relative_to(root.parent).as_posix()
        source = path.read_text(encoding="utf-8")
        text, needed = _rewrite(source, module, is_package, resolver, relative)
        if module in extra_imports:
            text, needed = _add_side_effect_imports(text, needed, extra_imports[module], resolver, relative)
        header = (f"# Vendored by hf_mltm.hub from {relative}"
                  + (f" (hf_mltm {version})" if version else "")
                  + ": only its hf_mltm imports were rewritten, to the files beside it.\n")
        result[module] = VendoredModule(module, path, file_name, header + text, tuple(needed))
        queue.extend(name for name in needed if name not in result)
    return result


def _closure(start: Sequence[str], resolver: _Resolver) -> set[str]:
    seen: set[str] = set()
    queue = list(start)
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        path, is_package = module_source(module, resolver.package, resolver.package_dir)
        _, needed = _rewrite(path.read_text(encoding="utf-8"), module, is_package, resolver, module)
        queue.extend(needed)
    return seen


def _add_side_effect_imports(text: str, needed: list[str], extra: Sequence[str], resolver: _Resolver,
                             where: str) -> tuple[str, list[str]]:
    reached = _closure(needed, resolver)
    missing = [module for module in extra if module not in reached]
    if not missing:
        return text, needed
    tree = ast.parse(text)
    last = max((node.end_lineno for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)), default=0)
    if last == 0:
        raise ValueError(f"{where}: has no top-level import after which to add the registrations of {missing}.")
    lines = text.splitlines(keepends=True)
    added = ["# Added by hf_mltm.hub: this checkpoint's sub-configs use the model types these modules register.\n"]
    for module in missing:
        resolver.tree(module)
        flat = vendored_file_name(module, resolver.package)[: -len(".py")]
        added.append(f"from .{flat} import __name__ as _{flat}_module  # noqa: F401\n")
    return "".join(lines[:last] + added + lines[last:]), needed + [m for m in missing if m not in needed]


def write_vendored_modules(modules: dict[str, VendoredModule], folder: str | Path) -> list[Path]:
    """Write the vendored files into ``folder`` (which must exist). Returns their paths."""
    folder = Path(folder)
    paths = []
    for vendored in modules.values():
        path = folder / vendored.file_name
        path.write_text(vendored.text, encoding="utf-8")
        paths.append(path)
    return paths
