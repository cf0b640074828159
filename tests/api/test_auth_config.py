"""API tokens in the config: inline or from a file only ztpd can read; never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ztpd.config import ApiToken, AuthConfig
from ztpd.errors import ConfigError
from ztpd.http.auth import Auth

SECRET = "s3cret-token-value-0123456789"


def test_token_file_is_read(tmp_path: Path) -> None:
    f = tmp_path / "admin.token"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    tok = ApiToken(name="ops", role="admin", token_file=f)
    assert tok.secret() == SECRET
    auth = Auth(AuthConfig(tokens=[tok]))
    sid, who = auth.login(SECRET)
    assert (who.name, who.role, who.via) == ("ops", "admin", "session")
    assert sid and SECRET not in repr(auth.config)


@pytest.mark.parametrize(
    ("mode", "content", "message"),
    [
        (0o644, SECRET, "readable by others"),
        (0o600, "short", "at least 16"),
    ],
)
def test_unusable_token_file_stops_start_up(
    tmp_path: Path, mode: int, content: str, message: str
) -> None:
    f = tmp_path / "t"
    f.write_text(content)
    f.chmod(mode)
    with pytest.raises(ConfigError, match=message) as e:
        Auth(AuthConfig(tokens=[ApiToken(name="ops", role="admin", token_file=f)]))
    assert "name=ops" in str(e.value)
    assert content not in str(e.value)


def test_missing_token_file_names_it(tmp_path: Path) -> None:
    tok = ApiToken(name="ops", role="viewer", token_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read"):
        tok.secret()


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "a", "role": "admin"},
        {"name": "a", "role": "admin", "token": SECRET, "token_file": "/x"},
        {"name": "a", "role": "admin", "token_file": "relative/path"},
        {"name": "a", "role": "admin", "token": "short"},
        {"name": "a", "role": "root", "token": SECRET},
        {"name": "a b", "role": "admin", "token": SECRET},
    ],
)
def test_bad_token_entries(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as e:
        ApiToken.model_validate(fields)
    assert SECRET not in str(e.value)


def test_duplicate_names_refused() -> None:
    tok = {"name": "a", "role": "admin", "token": SECRET}
    with pytest.raises(ValidationError, match="used twice"):
        AuthConfig.model_validate({"tokens": [tok, {**tok, "token": SECRET + "x"}]})
