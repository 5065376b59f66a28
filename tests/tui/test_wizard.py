"""The wizard: a form generated from the schema, edited through a Pilot, saved as a valid spec."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

import pytest
from pydantic import BaseModel, ConfigDict, Field, create_model
from ruamel.yaml import YAML
from synthetic import screen_text
from typing_extensions import Annotated

import tabula.schemas
from tabula.schemas import Spec
from tabula.tui.app import WizardApp
from tabula.tui.dialogs import ConfirmReplace
from tabula.tui.schema_form import CHOICE, DICT, LIST, MODEL, SCALAR, SWITCH, UNION, YAML as YAML_WIDGET, form_fields
from tabula.tui.spec_source import load_start, merge
from tabula.tui.widgets.error_list import ErrorList
from tabula.tui.widgets.field_row import FieldRow
from tabula.tui.widgets.plan_panel import PlanPanel
from tabula.tui.widgets.model_section import ModelSection
from tabula.tui.wizard import WizardScreen

pytestmark = pytest.mark.anyio
SCHEMA_FILE = Path(tabula.schemas.__file__).with_name("tabula-spec.schema.json")


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def row(app, dotted: str) -> FieldRow:
    return [w for w in app.screen.query(FieldRow) if w.path == _path(dotted) and w.is_mounted][-1]


def section(app, dotted: str) -> ModelSection:
    return [w for w in app.screen.query(ModelSection) if w.path == _path(dotted) and w.is_mounted][-1]


async def wait_for(pilot, find, dotted: str):
    """Sections build their fields when opened (asynchronously): wait until `dotted` is there."""
    for _ in range(50):
        try:
            return find(pilot.app, dotted)
        except IndexError:
            await pilot.pause(0.05)
    return find(pilot.app, dotted)


def errors_text(app) -> str:
    return str(app.screen.query_one(ErrorList).render())


def plan_text(app) -> str:
    return str(app.screen.query_one(PlanPanel).render())


async def until(pilot, condition, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    assert condition()


async def open_section(pilot, dotted: str) -> None:
    """Unfold every section on the way to `dotted` (folded sections are built when opened)."""
    parts = dotted.split(".")
    for end in range(1, len(parts) + 1):
        (await wait_for(pilot, section, ".".join(parts[:end]))).collapsed = False
        await pilot.pause()


async def type_into(pilot, dotted: str, text: str) -> None:
    field = await wait_for(pilot, row, dotted)
    field.control.focus()
    await pilot.press("end", "shift+home", "backspace", *text)


def read_yaml(path):
    return YAML(typ="safe").load(path.read_text())


@pytest.mark.slow
async def test_preset_edited_through_the_pilot_saves_the_expected_spec_and_replans(tmp_path):
    from tabula.tui.plan_rows import plan_rows

    out = tmp_path / "mine.yaml"
    start = load_start("quickstart")
    app = WizardApp(lambda: WizardScreen(Spec, load_start("quickstart"), output=out, source="quickstart", planner=plan_rows,
                                         schema_file=SCHEMA_FILE))
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: "non-embedding" in plan_text(app))  # planned in a worker thread
        rows = dict(plan_rows(Spec.model_validate(start))[0])  # the compiler's numbers (3.82M, 384 x 4k tokens today)
        assert rows["parameters"] in plan_text(app) and rows["total steps"] in plan_text(app)
        await type_into(pilot, "name", "mine")
        await open_section(pilot, "model")
        await type_into(pilot, "model.d_model", "384")
        await type_into(pilot, "model.dropout", "0.1")
        await open_section(pilot, "train.budget")
        await type_into(pilot, "train.budget.tokens", "4M")
        await open_section(pilot, "model.block.attention")
        section(app, "model.block.attention").query_one(".kind-select").value = "mha"  # n_heads is kept, n_kv_heads goes
        await pilot.pause()
        assert app.screen.form.get(("model", "block", "attention")) == {"kind": "mha", "n_heads": 8}
        expected = merge(start, {"name": "mine", "model": {"d_model": 384, "dropout": 0.1}, "train": {"budget": {"tokens": "4M"}}})
        expected["model"]["block"]["attention"] = {"kind": "mha", "n_heads": 8}
        parameters = dict(plan_rows(Spec.model_validate(expected))[0])["parameters"]
        await until(pilot, lambda: parameters in plan_text(app))  # the plan follows the edits
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "the spec is valid" in errors_text(app)
        await pilot.press("ctrl+q")
    assert app.return_value == out
    saved = read_yaml(out)
    assert Spec.model_validate(saved) == Spec.model_validate(expected)
    assert saved["train"]["budget"]["tokens"] == "4M"  # written as typed
    assert "# Width of the residual stream" in out.read_text()  # comments from the descriptions
    # for editors, as specs/quickstart.yaml has it; outside the repository the path is absolute
    assert out.read_text().splitlines()[0] == f"# yaml-language-server: $schema={SCHEMA_FILE.resolve().as_posix()}"


def test_the_schema_line_is_relative_inside_the_repository(tmp_path):
    from tabula.tui.spec_yaml import schema_reference

    root = SCHEMA_FILE.resolve().parents[1]
    assert schema_reference(SCHEMA_FILE, root / "specs" / "mine.yaml") == "../schemas/tabula-spec.schema.json"
    assert schema_reference(SCHEMA_FILE, root / "mine.yaml") == "schemas/tabula-spec.schema.json"
    assert (root / "specs" / "quickstart.yaml").read_text().startswith(
        "# yaml-language-server: $schema=../schemas/tabula-spec.schema.json\n")  # the form it copies
    assert schema_reference(SCHEMA_FILE, tmp_path / "mine.yaml") == SCHEMA_FILE.resolve().as_posix()


@pytest.mark.slow
async def test_invalid_value_shows_its_error_and_blocks_saving(tmp_path):
    out = tmp_path / "bad.yaml"
    app = WizardApp(lambda: WizardScreen(Spec, load_start("quickstart"), output=out))
    async with app.run_test(size=(160, 48)) as pilot:
        await open_section(pilot, "model.block.attention")
        await type_into(pilot, "model.block.attention.n_kv_heads", "3")
        await type_into(pilot, "model.n_layers", "-1")
        await until(pilot, lambda: "2 errors" in errors_text(app))  # debounced validation, later on a busy machine
        kv = row(app, "model.block.attention.n_kv_heads")
        assert kv.has_class("-invalid")
        assert "n_kv_heads (3) must divide n_heads (8)" in str(kv.query_one(".error").render())
        assert row(app, "model.n_layers").has_class("-invalid")
        listed = errors_text(app)
        assert "2 errors: saving is blocked" in listed
        assert "model.n_layers: expected a number greater than 0, found -1" in listed  # as tabula validate says it
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not out.exists()
        await type_into(pilot, "model.block.attention.n_kv_heads", "4")
        await type_into(pilot, "model.n_layers", "")  # empty: back to required -> an error
        await until(pilot, lambda: "model.n_layers: missing required key 'n_layers' in model" in errors_text(app))
        await type_into(pilot, "model.n_layers", "6")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert read_yaml(out)["model"]["n_layers"] == 6


# ---------------------------------------------------------------- any schema, not only Spec's


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = Field(default=2, gt=0, description="How deep.")


class Circle(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["circle"] = Field(description="A circle.")
    radius: float = Field(gt=0, description="Its radius.")


class Square(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["square"] = Field(description="A square.")
    side: float = Field(default=1.0, description="Its side.")


Shape = Annotated[Union[Circle, Square], Field(discriminator="kind")]


class Toy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(description="A title.")
    count: int = Field(default=3, ge=0, description="How many.")
    mode: Literal["fast", "slow"] = Field(default="fast", description="Which way.")
    verbose: bool = Field(default=False, description="Say more.")
    inner: Inner = Field(default_factory=Inner, description="Nested.")
    shape: Shape = Field(description="A shape.")
    shapes: list[Shape] = Field(default_factory=list, description="More shapes.")
    named: dict[str, Shape] = Field(default_factory=dict, description="Named shapes.")
    tags: list[str] = Field(default_factory=list, description="Tags.")
    limit: int | None = Field(default=None, description="Optional limit.")


def test_types_pick_widgets():
    fields = {f.name: f for f in form_fields(Toy)}
    assert {name: f.widget for name, f in fields.items()} == {
        "title": SCALAR, "count": SCALAR, "mode": CHOICE, "verbose": SWITCH, "inner": MODEL, "shape": UNION,
        "shapes": LIST, "named": DICT, "tags": YAML_WIDGET, "limit": SCALAR,
    }
    assert list(fields["shape"].members) == ["circle", "square"]
    assert fields["limit"].nullable and fields["title"].required and fields["count"].default == 3


async def test_a_field_added_to_a_schema_appears_in_the_form(tmp_path):
    Extended = create_model("Extended", __base__=Toy, warmup_ratio=(float, Field(default=0.05, description="A new field.")))
    out = tmp_path / "toy.yaml"
    app = WizardApp(lambda: WizardScreen(Extended, {"title": "t", "shape": {"kind": "circle", "radius": 1.0}}, output=out))
    async with app.run_test(size=(160, 48)) as pilot:
        assert "A new field." in screen_text(app)
        await type_into(pilot, "warmup_ratio", "0.2")
        await open_section(pilot, "shape")
        section(app, "shape").query_one(".kind-select").value = "square"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert Extended.model_validate(read_yaml(out)) == Extended(title="t", shape=Square(kind="square"), warmup_ratio=0.2)


async def test_rows_are_added_and_removed(tmp_path):
    out = tmp_path / "toy.yaml"
    app = WizardApp(lambda: WizardScreen(Toy, {"title": "t", "shape": {"kind": "circle", "radius": 1.0}}, output=out))
    async with app.run_test(size=(160, 48)) as pilot:
        for name, rows in (("shapes", 2), ("named", 1)):
            collection = next(w for w in app.screen.query("CollectionSection") if w.path == (name,))
            collection.collapsed = False
            for count in range(rows):
                await until(pilot, lambda: len(collection.query(".row")) == count and len(collection.query(".add")) == 1)
                collection.query_one(".add").press()
            await until(pilot, lambda: len(collection.query(".row")) == rows)
        shapes = next(w for w in app.screen.query("CollectionSection") if w.path == ("shapes",))
        shapes.query(".remove").first().press()
        await until(pilot, lambda: app.screen.form.get(("shapes",)) == [{"kind": "circle"}])
        await until(pilot, lambda: "shapes.0.radius: missing required key 'radius'" in errors_text(app)
                    and "shapes.1" not in errors_text(app))  # validated again after the removal
        await type_into(pilot, "shapes.0.radius", "2")
        await type_into(pilot, "named.source1.radius", "3")
        await pilot.press("ctrl+s")
        await pilot.pause()
    saved = read_yaml(out)
    assert saved["shapes"] == [{"kind": "circle", "radius": 2}]
    assert saved["named"] == {"source1": {"kind": "circle", "radius": 3}}


async def test_a_place_that_cannot_be_written_is_a_message_not_a_crash(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()  # `-o` naming a folder: the save must say so and keep the form open
    app = WizardApp(lambda: WizardScreen(Toy, {"title": "t", "shape": {"kind": "circle", "radius": 1.0}}, output=folder))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        await pilot.pause()
        messages = [notification.message for notification in app._notifications]
        assert any(f"Not saved: cannot write {folder}" in message for message in messages), messages
        assert app.screen.saved is None and app.is_running
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and not any(folder.iterdir())


@pytest.mark.parametrize("force", [False, True])
async def test_saving_over_a_file_with_content_asks_first_unless_forced(tmp_path, force):
    out = tmp_path / "mine.yaml"
    out.write_text("# my notes\ntitle: mine\n")
    app = WizardApp(lambda: WizardScreen(Toy, {"title": "t", "shape": {"kind": "circle", "radius": 1.0}}, output=out,
                                         force=force))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        await pilot.pause()
        if not force:
            assert isinstance(app.screen, ConfirmReplace) and "mine.yaml already exists" in screen_text(app)
            await pilot.press("n")
            await pilot.pause()
            assert out.read_text() == "# my notes\ntitle: mine\n" and app.screen.saved is None
            await pilot.press("ctrl+s", "y")
            await pilot.pause()
        assert read_yaml(out)["title"] == "t"
        out.write_text(out.read_text() + "# after\n")
        await pilot.press("ctrl+s")  # saved here once: saving again asks no more
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmReplace) and "# after" not in out.read_text()


def test_new_refuses_a_folder_as_its_output(tmp_path, capsys):
    from tabula.cli import main

    assert main(["new", "-o", str(tmp_path)]) == 2
    assert f"{tmp_path} is a directory; -o takes a file name" in capsys.readouterr().err


@pytest.mark.parametrize("text, says", [
    ("name: x\nmodel: {d_model: 3\n", "bad.yaml:3:1: YAML syntax error"),
    ("seed: 1\nseed: 2\n", "bad.yaml:2:1: duplicate key 'seed'"),
    ("just text\n", "bad.yaml:1:1: a spec is a mapping of keys"),
])
def test_a_start_that_cannot_be_read_says_where(tmp_path, monkeypatch, text, says):
    from tabula.tui.spec_source import SourceError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SourceError) as raised:
        load_start("bad.yaml")
    assert str(raised.value).startswith(says)
