"""Whatever an unkind user hands `validate`, `plan` or `diff` (garbage overrides, numbers out of
range, huge or deeply nested values, odd unicode, paths that are no spec, files that are not
specs, extends that wander off), the command exits 2 with errors that name the spec path or the
file, in well under a second, and never with a traceback. A file that is not a spec is never
quoted, and `extends:` reads nothing outside the spec's folder and specs/ unless allowed.

Damaged run folders (resume, watch) are tested with the runtime."""

from __future__ import annotations

import io
import os
import re
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabula.cli import build_parser, main
from tabula.schemas.yaml_source import MAX_SPEC_BYTES

from hostile_values import FLOATS, NEVER_A_NUMBER, NEVER_A_WHOLE_NUMBER, NUMBERS

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "specs" / "quickstart.yaml")
SECRET = "hunter2-SECRET-7f3a"  # the content of files that are not specs: must never be printed
LOADS_SPECS = ["validate", "plan", "diff", "prepare", "run", "export", "new"]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def cli(*argv: str) -> tuple[int, str, str]:
    """`tabula ARGV` in this process: (exit code, stdout, stderr). An exception escapes (a failure)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit:  # argparse's errors
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def assert_refused(result: tuple[int, str, str], *names: str) -> str:
    """Exit 2, no traceback, and each of `names` (a spec path, a file) in what was printed."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    for name in names:
        assert name in err, (name, err)
    return err


# ---------------------------------------------------------------- bad overrides


@FAST
@given(st.sampled_from(["validate", "plan"]), st.data())
def test_a_number_out_of_range_or_of_the_wrong_type_exits_2_naming_its_path(command, data):
    path = data.draw(st.sampled_from(NUMBERS))
    value = data.draw(st.sampled_from(NEVER_A_NUMBER if path in FLOATS else NEVER_A_WHOLE_NUMBER))
    assert_refused(cli(command, QUICKSTART, f"{path}={value}"), f"error: {path}: ")


override_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)


@FAST
@given(st.sampled_from(["validate", "plan"]), override_text, override_text)
def test_garbage_overrides_exit_2_naming_the_override(command, key, value):
    item = f"zz{key}={value}"  # `zz...` is no spec key, whatever follows
    assert_refused(cli(command, QUICKSTART, item), "<override 1: ")


@FAST
@given(st.sampled_from(["validate", "plan"]), st.integers(1, 400), st.sampled_from("[{"))
def test_deeply_nested_values_exit_2(command, depth, bracket):
    closing = {"[": "]", "{": "}"}[bracket]
    value = (bracket + ("a: " if bracket == "{" else "")) * depth + "1" + closing * depth
    assert_refused(cli(command, QUICKSTART, f"track.tags={value}"), "error: track.tags")


@pytest.mark.parametrize("length", [101, 300, 5000, 100_000])
def test_huge_names_exit_2(length):
    assert_refused(cli("validate", QUICKSTART, "name=" + "a" * length), "error: name: ")


@FAST
@given(st.text(max_size=120))
def test_any_unicode_name_is_a_valid_run_folder_name_or_refused(name):
    quoted = "'" + name.replace("'", "''") + "'"  # a YAML string, whatever it holds
    code, out, err = cli("validate", QUICKSTART, f"name={quoted}")
    valid = bool(NAME_PATTERN.fullmatch(name)) and len(name) <= 100  # what a run folder's name may hold
    assert code == (0 if valid else 2), (name, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("item", [
    "=", "==", "a..b=1", "model=", ".=1", "model.=1", "=1",
    ".".join(["a"] * 3000) + "=1", "model." + ".".join(["n_layers"] * 200) + "=1",
    "model.n_layers=" + "1" * 300,  # longer than a file name: an override, not a path that cannot be stat'ed
    "x" * 300 + "=1", "data.curriculum.-1.seq_len=1", "data.curriculum.99999999999999999999.seq_len=1",
    "seed=!!python/object/apply:os.system ['echo pwned']", "seed=*alias", "seed=&a [*a]", "seed=1\n2",
    "extends=x.yaml", "name=\x00", "model.d_model=0x" + "f" * 40,
])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_malformed_overrides_exit_2(command, item):
    assert_refused(cli(command, QUICKSTART, item), "<override 1: ")


# ---------------------------------------------------------------- bad flags


@pytest.mark.parametrize("argv", [
    ["run", QUICKSTART, "--max-steps", "-1"], ["run", QUICKSTART, "--max-steps", "0"], ["run", QUICKSTART, "--max-steps", "x"],
    ["run", QUICKSTART, "--nproc", "0"], ["run", QUICKSTART, "--nproc", "-3"], ["plan", QUICKSTART, "--world-size", "0"],
    ["plan", QUICKSTART, "--mfu", "nan"], ["plan", QUICKSTART, "--mfu", "2"], ["plan", QUICKSTART, "--peak-tflops", "inf"],
    ["plan", QUICKSTART, "--peak-tflops", "-1"], ["plan", QUICKSTART, "--device", "tpu"], ["validate", QUICKSTART, "--bogus"],
    ["diff", QUICKSTART], ["validate"], ["validate", "model.n_layers=2"], ["bogus-command"], ["validate", QUICKSTART, "-=1"],
])
def test_bad_flags_exit_2(argv):
    assert_refused(cli(*argv), "error")


# ---------------------------------------------------------------- paths and files that are no spec


path_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="=\x00"), min_size=1, max_size=300)


@FAST
@given(st.sampled_from(["validate", "plan", "diff"]), path_text)
def test_a_path_that_is_no_spec_exits_2(tmp_path, command, name):
    try:
        exists = os.path.exists(name)
    except (OSError, ValueError):
        exists = False
    if name.startswith("-") or exists:
        return
    argv = [command, name] if command != "diff" else [command, QUICKSTART, name]
    assert_refused(cli(*argv), "error")


@FAST
@given(st.sampled_from(["validate", "plan", "diff"]), st.one_of(st.binary(max_size=3000), st.text(max_size=3000)))
def test_a_file_of_random_content_exits_2_naming_it(tmp_path_factory, command, content):
    path = tmp_path_factory.mktemp("random") / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    argv = [command, str(path)] if command != "diff" else [command, QUICKSTART, str(path)]
    assert_refused(cli(*argv), str(path))


def special_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to(tmp_path / "loop.yaml")
    with open(tmp_path / "huge.yaml", "wb") as handle:  # 50 MB, sparse: the reader must stop at its cap
        handle.truncate(50 * 2**20)
    (tmp_path / "just_over.yaml").write_text("name: x\n" + "#" * MAX_SPEC_BYTES)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    files = {name: tmp_path / name for name in ("folder", "fifo.yaml", "loop.yaml", "huge.yaml", "just_over.yaml", "latin1.yaml")}
    if Path("/dev/zero").exists():
        files["/dev/zero"] = Path("/dev/zero")
    return files


@pytest.mark.timeout(60)  # a FIFO or /dev/zero read to the end would never return
@pytest.mark.parametrize("command", ["validate", "plan", "diff"])
def test_devices_pipes_folders_loops_and_huge_files_are_refused_in_one_line(tmp_path, command):
    for name, path in special_files(tmp_path).items():
        argv = [command, str(path)] if command != "diff" else [command, QUICKSTART, str(path)]
        err = assert_refused(cli(*argv), str(path))
        assert len(err.splitlines()) <= 3, err  # one line (validate adds its count line)
        if name in ("huge.yaml", "just_over.yaml"):
            assert f"larger than {MAX_SPEC_BYTES // 1024} KiB" in err


def test_extends_obeys_the_same_reading_rules(tmp_path):
    special = special_files(tmp_path)
    for name in ("fifo.yaml", "huge.yaml", "latin1.yaml"):
        spec = tmp_path / f"extends_{name}"
        spec.write_text(f"name: x\nextends: {special[name].name}\n")
        assert_refused(cli("validate", str(spec)), str(spec.name))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text, says", [
    ("name: x\na: !!python/object/apply:os.system ['echo pwned']\n", "the tag !!python/object/apply:os.system is not allowed"),
    ("name: x\ntrack:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)), "more than 200000 values"),
    ("name: x\ntags: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deeply"),
    ("name: x\nname: y\n", "duplicate key 'name'"),
    ("name: x\nmodel:\n  <<: {d_model: 8}\n", "merge keys (<<) are not supported"),
    ("name: x\n? [a, b]\n: 1\n", "a key must be a plain name"),
    ("name: x\n---\nname: y\n", "YAML syntax error"),
    ("name: x\nmodel:\n\td_model: 8\n", "a tab in the indentation"),
    ("name: x\nseed: \x07\n", "a character YAML does not allow"),
    ("name: x\nseed: 1\n" + "x: 1\n" * 60_000, f"larger than {MAX_SPEC_BYTES // 1024} KiB"),
], ids=["python-tag", "alias-bomb", "deep-brackets", "duplicate-key", "merge-key", "list-key", "two-documents", "tab",
        "control-character", "too-large"])
def test_hostile_yaml_is_refused_quickly_with_its_reason(tmp_path, text, says):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    assert says in assert_refused(cli("validate", str(path)), str(path))


@pytest.mark.parametrize("text", ["\ufeff", "\r\n", "\r"])
def test_a_byte_order_mark_and_windows_or_old_mac_newlines_read_as_the_same_spec(tmp_path, text):
    source = Path(QUICKSTART).read_text()
    path = tmp_path / "spec.yaml"
    path.write_text(text + source if text == "\ufeff" else source.replace("\n", text), newline="")
    code, out, err = cli("diff", QUICKSTART, str(path))
    assert (code, err) == (0, "")


# ---------------------------------------------------------------- files that are not specs are never quoted


NOT_SPECS = {
    "passwd": f"root:x:0:0:{SECRET}:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
    "secret.yaml": f"apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\ntype: Opaque\ndata:\n  PASSWORD: {SECRET}\n",
    "env": f"API_KEY={SECRET}\nOTHER=1\n",
    "broken.yaml": f"apiVersion: v1\nkind: Secret\ndata:\n  PASSWORD: [{SECRET}\n",
    "list.yaml": f"- {SECRET}\n- b\n",
    "comments.yaml": f"# {SECRET}\n",
    "tabs.yaml": f"server:\n\tpassword: {SECRET}\n",
    "control.yaml": f"key: {SECRET}\x07\n",
}


@pytest.mark.parametrize("name", sorted(NOT_SPECS))
@pytest.mark.parametrize("command", ["validate", "plan", "diff"])
def test_a_file_that_is_not_a_spec_is_named_but_never_quoted(tmp_path, name, command):
    path = tmp_path / name
    path.write_text(NOT_SPECS[name])
    argv = [command, str(path)] if command != "diff" else [command, QUICKSTART, str(path)]
    err = assert_refused(cli(*argv), str(path))
    assert SECRET not in err and "not a tabula spec" in err


def test_a_spec_with_a_mistake_is_still_quoted_where_the_mistake_is(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(Path(QUICKSTART).read_text().replace("  n_layers: 4", "  n_layers: 4: 5"))
    err = assert_refused(cli("validate", str(path)), f"{path}:10:")
    assert "n_layers: 4: 5" in err and "^" in err


# ---------------------------------------------------------------- extends stays home unless allowed


@pytest.fixture
def outside(tmp_path):
    """A spec folder `home/` and, beside it, `elsewhere/` holding a real spec and a secret."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (elsewhere / "base.yaml").write_text(Path(QUICKSTART).read_text())
    (elsewhere / "passwd").write_text(NOT_SPECS["passwd"])
    (home / "linked.yaml").symlink_to(elsewhere / "passwd")
    return types.SimpleNamespace(home=home, elsewhere=elsewhere)


@pytest.mark.parametrize("target", ["../elsewhere/passwd", "{elsewhere}/passwd", "linked.yaml", "../elsewhere/base.yaml"])
@pytest.mark.parametrize("command", ["validate", "plan", "diff"])
def test_extends_outside_the_spec_folder_and_specs_is_refused_without_the_flag(outside, target, command):
    spec = outside.home / "spec.yaml"
    spec.write_text(f"name: mine\nextends: {target.format(elsewhere=outside.elsewhere)}\n")
    argv = [command, str(spec)] if command != "diff" else [command, QUICKSTART, str(spec)]
    err = assert_refused(cli(*argv), f"{spec}:2:10: error: extends: ", "--allow-extends-outside")
    assert SECRET not in err


@pytest.mark.parametrize("target", ["../elsewhere/passwd", "linked.yaml"])
def test_with_the_flag_extends_reads_outside_but_never_quotes_a_file_that_is_not_a_spec(outside, target):
    spec = outside.home / "spec.yaml"
    spec.write_text(f"name: mine\nextends: {target}\n")
    err = assert_refused(cli("validate", str(spec), "--allow-extends-outside"), "not a tabula spec")
    assert SECRET not in err


def test_with_the_flag_a_spec_outside_is_extended(outside):
    spec = outside.home / "spec.yaml"
    spec.write_text("name: mine\nextends: ../elsewhere/base.yaml\nmodel: {n_layers: 2}\n")
    code, out, err = cli("validate", str(spec), "--allow-extends-outside")
    assert code == 0 and "mine" in out, err
    assert cli("diff", QUICKSTART, str(spec), "--allow-extends-outside", "--no-impact")[0] == 1  # differs: name, n_layers
    assert cli("plan", str(spec), "--allow-extends-outside", "--json")[0] == 0


def test_presets_and_the_spec_folder_tree_need_no_flag(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(Path(QUICKSTART).read_text())
    for extends in ("quickstart", "presets/llama-tiny.yaml", "llama-tiny", "sub/base.yaml", QUICKSTART):
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"name: mine\nextends: {extends}\n")
        code, _, err = cli("validate", str(spec))
        assert code == 0, (extends, err)


@pytest.mark.parametrize("command", LOADS_SPECS)
def test_every_command_that_loads_specs_takes_the_flag(command):
    parser = build_parser()
    argv = {"diff": ["diff", "a", "b"], "new": ["new"], "export": ["export", "a", "--out", "o"]}.get(command, [command, "a"])
    args, extra = parser.parse_known_args([*argv, "--allow-extends-outside"])
    assert args.allow_extends_outside is True and not extra


def test_the_wizard_start_obeys_the_same_rule(outside):
    from tabula.tui.spec_source import SourceError, load_start

    spec = outside.home / "spec.yaml"
    spec.write_text("name: mine\nextends: ../elsewhere/base.yaml\n")
    with pytest.raises(SourceError, match="--allow-extends-outside"):
        load_start(str(spec))
    assert load_start(str(spec), allow_extends_outside=True)["name"] == "mine"
    spec.write_text("name: mine\nextends: linked.yaml\n")
    with pytest.raises(SourceError) as raised:
        load_start(str(spec), allow_extends_outside=True)
    assert "not a tabula spec" in str(raised.value) and SECRET not in str(raised.value)


def test_the_dashboards_training_process_gets_the_flag(tmp_path):
    from tabula.commands.run import child_command
    from tabula.runtime.session import RunOptions
    from tabula.schemas.loader import load_spec

    spec = load_spec(QUICKSTART)
    options = RunOptions(spec_path=QUICKSTART, run_dir=tmp_path / "run", allow_extends_outside=True)
    command, _ = child_command(options, spec)
    assert "--allow-extends-outside" in command
    command, _ = child_command(RunOptions(spec_path=QUICKSTART, run_dir=tmp_path / "run"), spec)
    assert "--allow-extends-outside" not in command


@pytest.mark.parametrize("item", ["model." + "k" * 5000 + "=1", "name=" + "a" * 50_000, "zz=" + "[" * 64 + "]" * 64 + "x" * 20_000])
def test_a_huge_argument_is_named_cut_short_not_printed_again_and_again(item):
    err = assert_refused(cli("validate", QUICKSTART, item), "<override 1: ")
    assert len(err) < 6000, len(err)
