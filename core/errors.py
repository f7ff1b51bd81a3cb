"""Errors a user can act on. The service maps these to 4xx responses or a failed job's message."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input: says what was wrong and what to do.

    code: a short stable identifier (e.g. "zip_unsafe_path", "too_few_images", "sfm_low_registration").
    message: what was wrong, naming the file(s) where there are any.
    hint: what the user should do about it.
    """

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(f"{message} {hint}".strip())
        self.code = code
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class Cancelled(Exception):
    """Raised by a long-running core function when its `should_stop()` callback returned True."""
