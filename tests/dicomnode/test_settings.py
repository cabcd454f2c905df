"""The node's settings: the issue's names and defaults, parsed values, clear errors, and
.env.example documenting every one of them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from covidct.addresses import DEFAULT_GATEWAY_URL
from dicomnode.errors import DicomNodeError
from dicomnode.settings import Destination, NodeSettings, get_settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
NODE_PART = "# --- The DICOM node"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for name in NodeSettings.model_fields:
        monkeypatch.delenv(f"COVIDCT_PACS_{name.upper()}", raising=False)
    get_settings.cache_clear()


def test_the_issue_names_and_defaults() -> None:
    s = NodeSettings()
    assert (s.ae_title, s.host, s.port, s.http_port) == ("COVIDCT", "127.0.0.1", 11112, 8090)
    assert s.gateway_url == DEFAULT_GATEWAY_URL == "http://127.0.0.1:8080"
    assert s.stable_s == 10 and s.allowed_ae_titles == [] and s.destination == ""
    assert s.destination_address() is None
    assert (s.min_slices, s.top_k) == (20, 3)


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDCT_PACS_AE_TITLE", "NODE1")
    monkeypatch.setenv("COVIDCT_PACS_PORT", "104")
    monkeypatch.setenv("COVIDCT_PACS_ALLOWED_AE_TITLES", "SCANNER, PACS ,")
    monkeypatch.setenv("COVIDCT_PACS_DESTINATION", "ORTHANC@10.0.0.5:4242")
    monkeypatch.setenv("COVIDCT_PACS_STABLE_S", "2.5")
    monkeypatch.setenv("COVIDCT_PACS_SPOOL_DIR", "/var/spool/node")
    monkeypatch.setenv("COVIDCT_PACS_AUDIT_SALT", "pepper")
    s = load_settings()
    assert (s.ae_title, s.port, s.stable_s) == ("NODE1", 104, 2.5)
    assert s.allowed_ae_titles == ["SCANNER", "PACS"]
    assert s.destination_address() == Destination("ORTHANC", "10.0.0.5", 4242)
    assert s.spool_dir == Path("/var/spool/node") and s.audit_path.parent == s.spool_dir
    assert s.audit_salt is not None and s.audit_salt.get_secret_value() == "pepper"
    assert "pepper" not in repr(s)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PACS@127.0.0.1:104", Destination("PACS", "127.0.0.1", 104)),
        (" PACS@pacs.example.org:11112 ", Destination("PACS", "pacs.example.org", 11112)),
        ("PACS@[::1]:4242", Destination("PACS", "::1", 4242)),
    ],
)
def test_a_destination_is_parsed(text: str, expected: Destination) -> None:
    s = NodeSettings(destination=text)
    assert s.destination_address() == expected
    assert NodeSettings(destination=str(expected)).destination_address() == expected


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("DESTINATION", "PACS10.0.0.5:104", "expected AET@host:port"),
        ("DESTINATION", "PACS@10.0.0.5", "expected AET@host:port"),
        ("DESTINATION", "PACS@10.0.0.5:99999", "not in 1..65535"),
        ("DESTINATION", "A_TITLE_LONGER_THAN_16@h:104", "1 to 16 characters"),
        ("DESTINATION", "@host:104", "1 to 16 characters"),
        ("AE_TITLE", "BAD\\TITLE", "without backslash"),
        ("ALLOWED_AE_TITLES", "OK,ABCDEFGHIJKLMNOPQ", "1 to 16 characters"),
        ("PORT", "70000", "not in 0..65535"),
        ("STABLE_S", "0", "stable_s must be positive"),
        ("MAX_SLICE_THICKNESS_MM", "0.1", "slice thickness range"),
        ("KEEP_HOURS", "-1", "keep_hours"),
    ],
)
def test_a_bad_value_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(f"COVIDCT_PACS_{variable}", value)
    with pytest.raises(DicomNodeError, match=re.escape(words)) as caught:
        load_settings()
    assert "bad DICOM node settings" in str(caught.value)


def test_env_example_lists_every_node_setting_and_nothing_else() -> None:
    node_part = EXAMPLE.read_text().split(NODE_PART, 1)[1]
    names = re.findall(r"^COVIDCT_PACS_([A-Z0-9_]+)=", node_part, flags=re.M)
    assert sorted(n.lower() for n in names) == sorted(NodeSettings.model_fields)
    assert re.findall(r"^[A-Z0-9_]+=", node_part, flags=re.M) == [
        f"COVIDCT_PACS_{n}=" for n in names
    ]
    lines = node_part.splitlines()
    for i, line in enumerate(lines):  # every variable has its comment just above
        if line.startswith("COVIDCT_PACS_"):
            assert lines[i - 1].startswith("#") or lines[i - 1].startswith("COVIDCT_PACS_")


def test_a_copied_env_example_gives_the_defaults(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / ".env")
    assert NodeSettings().model_dump() == NodeSettings(_env_file=None).model_dump()  # type: ignore[call-arg]
