"""Write the README's layout section from the import contract, so that the two cannot disagree.

The layers come from `.importlinter` (top first), each package's description from its `__init__` docstring ("Layer:
what it holds"), and each interface module's public names from its source. `make test` runs it with `--check`,
which fails when the README is not what this would write.

    .venv/bin/python scripts/readme_layout.py [--check]
"""

from __future__ import annotations

import argparse
import ast
import configparser
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- layout:begin (written by scripts/readme_layout.py from .importlinter; edit those, then run it) -->"
END = "<!-- layout:end -->"


@dataclass(frozen=True)
class Package:
    name: str
    layer: str
    holds: str
    interfaces: tuple[str, ...]


def packages_read(root: Path = ROOT) -> list[list[Package]]:
    """The contract's layers, top first; each layer a list of packages (siblings are independent)."""
    contract = configparser.ConfigParser()
    contract.read(root / ".importlinter")
    interfaces = _lines(contract.get("importlinter:contract:interfaces", "interfaces", fallback=""))
    layers = []
    for line in _lines(contract["importlinter:contract:layers"]["layers"]):
        siblings = [name.strip() for name in line.replace(":", "|").split("|") if name.strip()]
        layers.append([_package(root, name, interfaces) for name in siblings])
    return layers


def section_render(layers: list[list[Package]], root: Path = ROOT) -> str:
    rows = ["| layer | package | holds | others import |", "|---|---|---|---|"]
    for level, siblings in enumerate(layers):
        for package in siblings:
            reach = ", ".join(f"`{name}`" for name in package.interfaces) or _reach_without_interface(level, layers)
            rows.append(f"| {package.layer} | `{package.name}/` | {package.holds} | {reach} |")
    order = " → ".join(" | ".join(package.layer for package in siblings) for siblings in layers)
    intro = (
        f"The layers, top first ({order}): a package imports only from the layers below it, siblings (`|`) not from "
        "each other, and another package only through the interface modules named here. `make test` checks both with "
        "import-linter (`.importlinter`; the `interfaces` contract type is `scripts/import_contracts.py`)."
    )
    text = [BEGIN, "", *_wrap(intro), "", *rows]
    for siblings in layers:
        for package in siblings:
            for module in package.interfaces:
                names = _public_names(root, module)
                listed = ", ".join(f"`{name}`" for name in names)
                text += [
                    "",
                    f"- `{module}`: {_docstring_first_sentence(_module_path(root, module))} {len(names)} names:",
                    f"  <details><summary>show</summary>{listed}</details>",
                ]
    return "\n".join([*text, "", END])


def readme_update(readme: str, section: str) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + section + readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README's section is out of date")
    check = parser.parse_args().check
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    updated = readme_update(readme, section_render(packages_read()))
    if updated == readme:
        return 0
    if check:
        print("README.md's layout section is out of date: run scripts/readme_layout.py", file=sys.stderr)
        return 1
    readme_path.write_text(updated)
    print("README.md's layout section rewritten")
    return 0


def _package(root: Path, name: str, interfaces: list[str]) -> Package:
    doc = ast.get_docstring(ast.parse((root / name / "__init__.py").read_text())) or ""
    layer, _, holds = " ".join(doc.split("\n\n")[0].split()).partition(": ")
    if not holds:
        raise ValueError(f"{name}/__init__.py needs a docstring 'Layer: what it holds'")
    owned = tuple(module for module in interfaces if module == name or module.startswith(name + "."))
    return Package(name=name, layer=layer, holds=holds, interfaces=owned)


def _wrap(text: str) -> list[str]:
    # Never inside a `code span`: its spaces are held together while wrapping.
    held = re.sub(r"`[^`]*`", lambda span: span.group().replace(" ", "\0"), text)
    return [line.replace("\0", " ") for line in textwrap.wrap(held, 118, break_on_hyphens=False)]


def _reach_without_interface(level: int, layers: list[list[Package]]) -> str:
    if level == 0:
        return "nothing (top of the stack)"
    return "everything (the shared core)" if level == len(layers) - 1 else "nothing (no interface module)"


def _public_names(root: Path, module: str) -> list[str]:
    tree = ast.parse(_module_path(root, module).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.ImportFrom):
            names += [alias.asname or alias.name for alias in node.names]
    return sorted(name for name in names if not name.startswith("_") and name != "annotations")


def _docstring_first_sentence(path: Path) -> str:
    doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())
    sentence = re.split(r"(?<=[.:])\s", doc, maxsplit=1)[0]
    return sentence if sentence.endswith(".") else sentence.rstrip(":") + "."


def _module_path(root: Path, module: str) -> Path:
    path = root / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _lines(value: str) -> list[str]:
    return [line.split("#")[0].strip() for line in value.splitlines() if line.split("#")[0].strip()]


if __name__ == "__main__":
    sys.exit(main())
