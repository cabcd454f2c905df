"""Gateway settings: .env.example documents every field, and an empty variable means unset."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


COMPOSE_PART = "# --- docker-compose.yml only ---"
NODE_PART = "# --- The DICOM node"


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    gateway_part, compose_part = EXAMPLE.read_text().split(COMPOSE_PART)
    compose_part = compose_part.split(NODE_PART)[0]  # the DICOM node's block follows
    names = re.findall(r"^COVIDCT_([A-Z0-9_]+)=", gateway_part, flags=re.M)
    assert sorted(n.lower() for n in names) == sorted(GatewaySettings.model_fields)
    # the compose part: variables docker-compose.yml (or its override) uses, none of the
    # gateway's (GatewaySettings ignores them)
    compose = "".join(p.read_text() for p in EXAMPLE.parent.glob("docker-compose*.yml"))
    for name in re.findall(r"^([A-Z0-9_]+)=", compose_part, flags=re.M):
        assert "${" + name + ":-" in compose, f"{name} is not used by docker-compose.yml"
        assert name.removeprefix("COVIDCT_").lower() not in GatewaySettings.model_fields


def test_env_example_is_read_alike_by_compose_and_the_gateway() -> None:
    """docker-compose 1.29 keeps an inline comment as part of the value (an empty key would
    become the comment): every comment stands on its own line."""
    for line in EXAMPLE.read_text().splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z0-9_]+=[^\s#]*", line), line


def test_a_copied_env_example_gives_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(EXAMPLE, tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    for name in GatewaySettings.model_fields:
        monkeypatch.delenv(f"COVIDCT_{name.upper()}", raising=False)
    from_file = GatewaySettings()
    assert from_file.api_key is None and from_file.admin_key is None
    assert from_file.model_dump() == GatewaySettings(_env_file=None).model_dump()


@pytest.mark.parametrize("name", ["COVIDCT_API_KEY", "COVIDCT_ADMIN_KEY"])
def test_an_empty_key_variable_is_unset_not_an_empty_key(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, "")
    settings = GatewaySettings()
    assert settings.api_key is None and settings.admin_key is None
    monkeypatch.setenv(name, "s3cret")
    field = name.removeprefix("COVIDCT_").lower()
    secret = getattr(GatewaySettings(), field)
    assert secret is not None and secret.get_secret_value() == "s3cret"
