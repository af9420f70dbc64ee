import pytest

from scripts.readme_layout import BEGIN, END, packages_read, readme_update, section_render

CONTRACT = """
[importlinter]
root_packages =
    top
    left
    right
    core

[importlinter:contract:layers]
name = layers
type = layers
layers =
    top
    left | right
    core

[importlinter:contract:interfaces]
name = interfaces
type = interfaces
apps =
    top
    left
    right
interfaces =
    left.interface
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / ".importlinter").write_text(CONTRACT)
    for name, doc in [
        ("top", "Top: the console"),
        ("left", "Left: items"),
        ("right", "Right: events"),
        ("core", "Core: shared"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f'"""{doc}."""\n')
    (tmp_path / "left" / "interface.py").write_text(
        '"""What the others may call."""\n'
        "from left.items import items_read\n\n\n"
        "def item_get():\n    pass\n\n\n"
        "def _hidden():\n    pass\n"
    )
    return tmp_path


def test_the_layers_come_from_the_contract_top_first(project):
    layers = packages_read(project)
    assert [[package.name for package in siblings] for siblings in layers] == [["top"], ["left", "right"], ["core"]]
    assert layers[1][0].interfaces == ("left.interface",) and layers[1][1].interfaces == ()


def test_the_section_names_each_interface_and_its_public_names(project):
    section = section_render(packages_read(project), project)
    assert "(Top → Left | Right → Core)" in section
    assert "| Left | `left/` | items. | `left.interface` |" in section
    assert "| Right | `right/` | events. | nothing (no interface module) |" in section
    assert "- `left.interface`: What the others may call. 2 names:" in section
    assert "<details><summary>show</summary>`item_get`, `items_read`</details>" in section
    assert "_hidden" not in section


def test_only_the_marked_section_is_replaced():
    readme = f"before\n{BEGIN}\nold\n{END}\nafter\n"
    assert readme_update(readme, f"{BEGIN}\nnew\n{END}") == f"before\n{BEGIN}\nnew\n{END}\nafter\n"
