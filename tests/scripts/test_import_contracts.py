import grimp
import pytest

from scripts.import_contracts import ForeignImport, foreign_imports

APPS = ["graph_app", "scoring_app", "surface_app"]


def _graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for line, (importer, imported) in enumerate(imports, start=1):
        graph.add_import(importer=importer, imported=imported, line_number=line, line_contents="import x")
    return graph


def test_an_import_of_another_apps_interface_passes():
    graph = _graph(("scoring_app.engine.retrieval", "graph_app.interface"))
    assert foreign_imports(graph, apps=APPS, interfaces={"graph_app.interface"}) == []


def test_an_import_of_another_apps_models_is_reported_with_its_line():
    graph = _graph(
        ("scoring_app.engine.retrieval", "graph_app.interface"),
        ("surface_app.admin", "graph_app.models"),
    )
    found = foreign_imports(graph, apps=APPS, interfaces={"graph_app.interface"})
    assert found == [ForeignImport("surface_app.admin", "graph_app.models", (2,))]


def test_imports_inside_an_app_and_of_core_are_free():
    graph = _graph(
        ("graph_app.training", "graph_app.models"),
        ("graph_app.training", "personalization.redis_keys"),
        ("personalization.cache", "personalization.redis_client"),
    )
    assert foreign_imports(graph, apps=APPS, interfaces=set()) == []


@pytest.mark.parametrize("imported", ["graph_app", "graph_app.interface_helpers"])
def test_the_package_itself_or_a_lookalike_name_is_not_the_interface(imported):
    graph = _graph(("surface_app.serving.slates", imported))
    found = foreign_imports(graph, apps=APPS, interfaces={"graph_app.interface"})
    assert [(item.importer, item.imported) for item in found] == [("surface_app.serving.slates", imported)]


def test_exempt_importers_are_not_checked():
    graph = _graph(
        ("surface_app.migrations.0003_partitions", "graph_app.state_log"),
        ("surface_app.serving.slates", "graph_app.models"),
    )
    found = foreign_imports(graph, apps=APPS, interfaces=set(), exempt=["*.migrations.*"])
    assert [(item.importer, item.imported) for item in found] == [("surface_app.serving.slates", "graph_app.models")]
