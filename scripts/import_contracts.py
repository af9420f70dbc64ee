"""An import-linter contract type: apps reach each other only through their interface modules.

import-linter's own contracts say which package may import which (layers, independence); none says *which module*
of another package may be imported. This one does (Sentry's cross-app services): an import from one listed app into
another must land on one of that app's interface modules. Core packages (not listed) are open to everyone. The
`.importlinter` file registers it as `contract_types = interfaces: scripts.import_contracts.InterfacesContract`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import grimp
from importlinter import Contract, ContractCheck, fields, output
from importlinter.application import contract_utils


@dataclass(frozen=True, order=True)
class ForeignImport:
    importer: str
    imported: str
    line_numbers: tuple[int, ...]


class InterfacesContract(Contract):
    """Options:
    - apps: the packages whose modules others may not import, except their interfaces.
    - interfaces: the modules other apps may import (e.g. graph_app.interface).
    - exempt_importers: modules (fnmatch patterns) whose imports are not checked, e.g. `*.migrations.*`: a
      migration is history, and calls what its operation needs where that lives now.
    - ignore_imports: imports to let pass (an unmatched one is an error, as in import-linter's own contracts).
    """

    type_name = "interfaces"

    apps = fields.ListField(subfield=fields.StringField())
    interfaces = fields.ListField(subfield=fields.StringField())
    exempt_importers = fields.ListField(subfield=fields.StringField(), required=False)
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(
        contract_utils.AlertLevel, default=contract_utils.AlertLevel.ERROR
    )

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=self.unmatched_ignore_imports_alerting,  # type: ignore[arg-type]
        )
        apps: list[str] = list(self.apps)  # type: ignore[call-overload]
        interfaces = set(self.interfaces)  # type: ignore[call-overload]
        unknown = sorted(name for name in interfaces if name not in graph.modules)
        if unknown:
            raise ValueError(f"Interface modules that do not exist: {', '.join(unknown)}")
        exempt: list[str] = list(self.exempt_importers or [])  # type: ignore[call-overload]
        foreign = foreign_imports(graph, apps=apps, interfaces=interfaces, exempt=exempt)
        return ContractCheck(
            kept=not foreign,
            warnings=list(removal.warnings),
            ignored_import_count=removal.ignored_import_count,
            metadata={"foreign_imports": foreign},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for found in check.metadata["foreign_imports"]:
            lines = ", ".join(f"l.{number}" for number in found.line_numbers)
            output.print_error(f"{found.importer} -> {found.imported} ({lines})", bold=False)
        output.new_line()
        output.print_error("Import the app's interface module instead, or add what you need to it.", bold=False)


def foreign_imports(
    graph: grimp.ImportGraph, *, apps: list[str], interfaces: set[str], exempt: Sequence[str] = ()
) -> list[ForeignImport]:
    """Every direct import from one app into another that does not land on an interface module."""
    found = []
    for importer in sorted(graph.modules):
        importer_app = _app_of(importer, apps)
        if importer_app is None or any(fnmatch.fnmatchcase(importer, pattern) for pattern in exempt):
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            imported_app = _app_of(imported, apps)
            if imported_app is None or imported_app == importer_app or imported in interfaces:
                continue
            details = graph.get_import_details(importer=importer, imported=imported)
            found.append(ForeignImport(importer, imported, tuple(detail["line_number"] for detail in details)))
    return found


def _app_of(module: str, apps: list[str]) -> str | None:
    return next((app for app in apps if module == app or module.startswith(app + ".")), None)
