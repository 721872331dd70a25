"""Reading a secret file: errors name the file and its purpose, never the secret."""

from __future__ import annotations

import pytest

from pipelines.platform.secrets import SecretError, read_secret


def test_a_secret_is_read_stripped_and_its_errors_never_show_it(tmp_path):
    path = tmp_path / "token"
    path.write_text("  s3cr3t-value-abc \n")
    assert read_secret(path, "the token") == "s3cr3t-value-abc"
    with pytest.raises(SecretError, match=r"the token: .* is too short \(16 characters; at least 32\)") as err:
        read_secret(path, "the token", min_chars=32)
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(SecretError, match="the token: no file configured"):
        read_secret(None, "the token")
    with pytest.raises(SecretError, match=r"cannot read .*missing"):
        read_secret(tmp_path / "missing", "the token")
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        read_secret(tmp_path / "blank", "the token")
