"""JSON reports: whole or nothing, and one clear error for a path that cannot be written."""

import json

import pytest
from ttfs.cli.main import main
from ttfs.contract.reports import ReportError, write_json


def test_write_json_creates_folders_and_reads_back(tmp_path):
    path = write_json(tmp_path / "a" / "b" / "report.json", {"images": 3, "accuracy": None})
    assert json.loads(path.read_text(encoding="utf-8")) == {"images": 3, "accuracy": None}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_json_failure_names_the_option_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ReportError, match=r"^--json: cannot write .*file/report\.json"):
        write_json(blocker / "report.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unserialisable_document_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_cli_unwritable_json_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = main(["golden", "fixtures/bundles/mnist-small", "--images", "5", "--json", str(blocker / "out.json")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("ttfs golden: error: --json: cannot write")
