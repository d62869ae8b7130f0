"""No silent loss of the user's files (issue 19, finding 8 / requirement 7).

An export never replaces its input (the same path, a hard link, a symbolic link - not even
with --force), never replaces an existing file of the artifact (an OpenVINO .bin included)
without --force, leaves no folder behind when it is refused, and writes files with the mode
the umask says - the .xml and its .bin alike. Real CLI runs on a real small ONNX artifact
(the digits CNN trained in this session).
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli

from edgecls.errors import OutputError

PRECIOUS = b"someone's precious file"


@pytest.fixture
def theirs(digits_onnx, tmp_path) -> Path:
    """An FP32 ONNX file of someone else's, in its own folder."""
    path = tmp_path / "their.onnx"
    shutil.copyfile(digits_onnx, path)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- the output is the input --------------------------------------------------------------
@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_export_onto_its_own_input_is_refused(theirs, tmp_path, force, cli):
    before = theirs.read_bytes()
    proc = cli("export", theirs, "--fp16", "-o", theirs, *force, cwd=tmp_path)
    assert_user_error(proc, "is the input", "their.onnx", "-o another path")
    assert theirs.read_bytes() == before
    assert _files(tmp_path) == ["their.onnx"]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_export_onto_a_link_to_its_input_is_refused(theirs, tmp_path, link, cli):
    before = theirs.read_bytes()
    alias = tmp_path / "alias.onnx"
    (os.link if link == "hard" else os.symlink)(theirs, alias)
    proc = cli("export", theirs, "--fp16", "-o", alias, "--force", cwd=tmp_path)
    assert_user_error(proc, "is the input", "alias.onnx", "--force never replaces an input")
    assert theirs.read_bytes() == before
    assert alias.read_bytes() == before
    assert os.path.samefile(alias, theirs)
    assert _files(tmp_path) == ["alias.onnx", "their.onnx"]


# -- the output exists ----------------------------------------------------------------------
def test_existing_onnx_is_kept_without_force_and_replaced_with_it(theirs, tmp_path, cli):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(PRECIOUS)
    proc = cli("export", theirs, "-o", out, cwd=tmp_path)
    message = assert_user_error(proc, "m.onnx exists", "pass --force to replace it",
                                "or -o another path")
    assert "Traceback" not in proc.stderr, message
    assert out.read_bytes() == PRECIOUS
    assert _files(out.parent) == ["m.onnx"]            # no temporary left beside it

    proc = run_cli("export", theirs, "-o", out, "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from edgecls.formats import read_spec
    assert read_spec(out).format == "onnx"             # a real artifact now
    assert _files(out.parent) == ["m.onnx"]


@pytest.mark.parametrize("present", [("m.xml", "m.bin"), ("m.bin",), ("m.xml",)],
                         ids=["xml-and-bin", "bin-only", "xml-only"])
def test_existing_openvino_files_are_kept_without_force(theirs, tmp_path, present, cli):
    out = tmp_path / "ir"
    out.mkdir()
    for name in present:
        (out / name).write_bytes(PRECIOUS)
    proc = cli("export", theirs, "--to", "openvino", "-o", out / "m.xml", cwd=tmp_path)
    assert_user_error(proc, f"{present[0]} exists", "--force")
    for name in present:
        assert (out / name).read_bytes() == PRECIOUS, name
    assert _files(out) == sorted(present)

    proc = run_cli("export", theirs, "--to", "openvino", "-o", out / "m.xml", "--force",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == ["m.bin", "m.xml"]
    assert (out / "m.bin").read_bytes() != PRECIOUS


def test_the_api_takes_force(digits_model, tmp_path):
    from edgecls.exporting import export
    model, spec = digits_model
    out = tmp_path / "d.onnx"
    out.write_bytes(PRECIOUS)
    with pytest.raises(OutputError, match="d.onnx exists: pass --force"):
        export(model, to="onnx", out=out, spec=spec)
    assert out.read_bytes() == PRECIOUS
    assert export(model, to="onnx", out=out, spec=spec, force=True) == out
    assert out.read_bytes() != PRECIOUS
    folder = tmp_path / "fresh"             # a folder spelled with a separator: made on write
    made = export(model, to="onnx", out=f"{folder}{os.sep}", spec=spec)
    assert made == folder / "digits_cnn.onnx" and made.is_file()


def test_best_checks_every_candidates_files_before_the_race(theirs, tmp_path, cli):
    """--to best does not know the winner's suffix before the race: every candidate's
    output is checked first, and the command is refused at once."""
    out = tmp_path / "m.onnx"
    out.write_bytes(PRECIOUS)
    proc = cli("export", theirs, "--to", "best", "-o", out, cwd=tmp_path)
    assert_user_error(proc, "m.onnx exists", "--force")
    assert out.read_bytes() == PRECIOUS
    assert "--to best:" not in proc.stdout       # no candidate was raced
    assert _files(tmp_path) == ["m.onnx", "their.onnx"]


def test_a_file_that_appears_while_writing_is_not_replaced(tmp_path):
    """atomic_paths(overwrite=False) checks again at the rename, under the folder lock: an
    export of minutes does not replace a file someone made meanwhile."""
    from edgecls.io import atomic_paths
    final = tmp_path / "m.xml"
    with pytest.raises(OutputError, match="m.bin exists"):
        with atomic_paths(final, final.with_suffix(".bin"), overwrite=False) as temps:
            for t in temps:
                t.write_text("new")
            final.with_suffix(".bin").write_bytes(PRECIOUS)      # meanwhile
    assert _files(tmp_path) == ["m.bin"]
    assert final.with_suffix(".bin").read_bytes() == PRECIOUS


# -- a refused command makes no folder --------------------------------------------------------
@pytest.mark.parametrize("case", ["refused-option", "unknown-model"])
def test_refused_command_leaves_no_output_folder(theirs, tmp_path, case, cli):
    newdir = tmp_path / "newdir"
    args = ([theirs, "--calib-size", "10"] if case == "refused-option" else ["resnt18"])
    proc = cli("export", *args, "--to", "onnx,openvino", "-o", newdir, cwd=tmp_path)
    assert_user_error(proc)
    assert not newdir.exists()
    assert not (tmp_path / "out").exists()


def test_output_folder_spelled_with_a_separator_is_made_on_write(theirs, tmp_path, cli):
    newdir = tmp_path / "newdir"
    proc = cli("export", theirs, "--calib-size", "10", "-o", f"{newdir}{os.sep}",
               cwd=tmp_path)
    assert_user_error(proc, "--calib-size")
    assert not newdir.exists()
    proc = run_cli("export", theirs, "-o", f"{newdir}{os.sep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _files(newdir) == ["digits_cnn.onnx"]


# -- modes follow the umask -----------------------------------------------------------------
@pytest.fixture
def umask():
    """Sets the umask of this process (inherited by the CLI it starts); restored after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_written_files_follow_the_umask(theirs, tmp_path, umask, mask, expected):
    umask(mask)
    out = tmp_path / "out"
    proc = run_cli("export", theirs, "--to", "onnx,openvino", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    modes = {p.name: oct(_mode(p)) for p in out.iterdir()}
    assert modes == {name: oct(expected) for name in
                     ("digits_cnn.onnx", "digits_cnn.xml", "digits_cnn.bin")}, modes
    assert oct(_mode(out)) == oct(0o777 & ~mask)          # the folder made for them too
