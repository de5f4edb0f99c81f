"""UIDs that may become path components of object keys."""

import pytest

from store_scp.server.store import key_safe


@pytest.mark.parametrize("uid", ["1", "1.2.840.10008.1.2", "2.25." + "9" * 59, "0.0"])
def test_digits_and_single_dots_up_to_64_characters_are_safe(uid: str) -> None:
    assert key_safe(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "1.",
        ".1",
        "1..2",
        "1" * 65,
        "1.2/3",
        "1.2 ",
        "1.2\n",
        "\u0661.\u0662",
        "1.a",
        "../1",
    ],
)
def test_anything_else_is_not(uid: str) -> None:
    assert not key_safe(uid)
