"""An import-linter contract type for pure modules: ``pure``.

A pure module (an algorithm over numpy / pandas / arrow data) may import any third-party package,
but of the project only the other pure modules and the modules in ``allowed``. None of the
built-in types says "nothing of the project except ...": ``forbidden`` needs the whole list of
forbidden modules written out (and kept up to date as modules are added), ``layers`` orders
packages, not single modules inside them. Registered in pyproject's ``[tool.importlinter]``;
``./run test`` runs ``lint-imports`` with this folder on ``PYTHONPATH``.

Options: ``modules`` (the pure modules; names in parentheses are optional, for modules that a
later change adds), ``allowed`` (project modules any pure module may import).
"""

from __future__ import annotations

from importlinter import Contract, ContractCheck, fields, output


def _names(raw: list[str]) -> tuple[set[str], set[str]]:
    """``(required, optional)`` module names of a list where ``(name)`` marks optional ones."""
    required, optional = set(), set()
    for name in raw:
        if name.startswith("(") and name.endswith(")"):
            optional.add(name[1:-1])
        else:
            required.add(name)
    return required, optional


class PureContract(Contract):
    """Pure modules import nothing of the project but each other and ``allowed``."""

    type_name = "pure"

    modules = fields.ListField(subfield=fields.StringField())
    allowed = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph, verbose: bool) -> ContractCheck:  # noqa: ANN001 - grimp graph
        required, optional = _names(list(self.modules))  # type: ignore[arg-type]
        present = graph.modules
        missing = sorted(required - present)
        pure = (required | optional) & present
        allowed = set(self.allowed or [])  # type: ignore[arg-type]
        root = (
            self.session_options["root_packages"][0]
            if self.session_options.get("root_packages")
            else self.session_options["root_package"]
        )
        illegal = []
        for module in sorted(pure):
            for imported in sorted(graph.find_modules_directly_imported_by(module)):
                own = imported == root or imported.startswith(root + ".")
                if own and imported not in pure and imported not in allowed:
                    lines = [
                        d["line_number"]
                        for d in graph.get_import_details(importer=module, imported=imported)
                    ]
                    illegal.append((module, imported, lines))
        return ContractCheck(
            kept=not illegal and not missing,
            metadata={"illegal": illegal, "missing": missing},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for name in check.metadata["missing"]:
            output.print_error(f"{name} is listed as pure but does not exist", bold=False)
        for module, imported, lines in check.metadata["illegal"]:
            where = ", ".join(f"l.{n}" for n in lines)
            output.print_error(
                f"{module} is pure and must not import {imported} ({where}): move the code it "
                "needs into a pure module or pass it in as data",
                bold=False,
            )
            output.new_line()
