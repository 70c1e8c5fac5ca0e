"""Named domain errors: every rule that refuses a command raises one of these.

Messages name the problem and never contain a secret.
"""

from __future__ import annotations


class SecStateError(Exception):
    """Base class of every error the ledger raises on purpose."""


class InvalidCommandError(SecStateError):
    """A command's fields failed validation at the edge."""

    def __init__(self, command: str, problems: list[str]) -> None:
        self.command = command
        self.problems = problems
        super().__init__(f"invalid {command}: " + "; ".join(problems))


# --- lookups ---------------------------------------------------------------


class UnknownAccountError(SecStateError):
    """No account with that name exists."""


class UnknownUserError(SecStateError):
    """No user with that username exists."""


class UnknownApiKeyError(SecStateError):
    """No API key with that key id exists in the account."""


class UnknownFactorError(SecStateError):
    """The user has no second factor with that id."""


class UnknownAllowlistEntryError(SecStateError):
    """The account's allowlist has no such entry."""


class UnknownDkimKeyError(SecStateError):
    """The account has no DKIM key for that domain and selector."""


# --- uniqueness ------------------------------------------------------------


class DuplicateAccountError(SecStateError):
    """An account with that name already exists."""


class DuplicateUsernameError(SecStateError):
    """The username is already taken somewhere in the ledger."""


class DkimSelectorInUseError(SecStateError):
    """The selector already names a key of that domain."""


# --- credentials -----------------------------------------------------------


class WeakPasswordError(SecStateError):
    """The password fails the password policy."""


class PasswordReuseError(SecStateError):
    """The new password equals the current one."""


class CheckRefusedError(SecStateError):
    """A check of a secret was refused; the refusal itself has been recorded."""

    def __init__(self, check: str, username: str, reason: str) -> None:
        self.check = check
        self.username = username
        self.reason = reason
        super().__init__(f"{check} refused for {username!r}: {reason}")


class LoginRefusedError(CheckRefusedError):
    """A login was refused; the refusal itself has been recorded."""

    def __init__(self, username: str, reason: str) -> None:
        super().__init__("login", username, reason)


class PasswordResetRequiredError(SecStateError):
    """The user must reset the password before doing this."""


class PasswordResetNotRequiredError(SecStateError):
    """Completing a reset was asked for a user with no pending reset."""


class UserDisabledError(SecStateError):
    """The user is disabled and may not act or be acted upon this way."""


class UserNotLockedError(SecStateError):
    """Unlocking was asked for a user that is not locked."""


class UserNotDisabledError(SecStateError):
    """Enabling was asked for a user that is not disabled."""


class UserLockedError(SecStateError):
    """The user is locked after failed guesses and must be unlocked first."""


# --- API keys --------------------------------------------------------------


class ApiKeyAlreadyRevokedError(SecStateError):
    """The API key was revoked before."""


class MalformedApiKeyError(SecStateError):
    """The presented API key is not in secstate's format or its checksum is wrong."""


class ApiKeyRejectedError(SecStateError):
    """The presented API key does not authenticate (unknown, revoked or wrong secret)."""


# --- second factors --------------------------------------------------------


# --- allowlist -------------------------------------------------------------


class InvalidCidrError(SecStateError):
    """The text is not a valid IPv4 or IPv6 network in CIDR notation."""


class DuplicateAllowlistEntryError(SecStateError):
    """The network is already covered by an existing allowlist entry."""


class SelfLockoutError(SecStateError):
    """Removing the entry would lock the caller's own IP out of the control panel."""


# --- DKIM ------------------------------------------------------------------


class DkimKeyStateError(SecStateError):
    """The DKIM key is not in a state that allows this transition."""


# --- staff -----------------------------------------------------------------


class NotStaffError(SecStateError):
    """Only employees of the staff organisation may do this."""


class AccountKindError(SecStateError):
    """The account is of the wrong kind for this command."""


# --- infrastructure translated ---------------------------------------------


class ConcurrencyConflictError(SecStateError):
    """Concurrent writers kept conflicting after the bounded retries."""


class StoreBusyError(SecStateError):
    """The database stayed locked past its timeout, or could not be reached.

    Transient, and no verdict on the command: it may succeed when tried again.
    """


class SecretKeyError(SecStateError):
    """A secret cannot be sealed or opened: no usable key ring, a missing key, or damage."""


class NoKeyRingError(SecretKeyError):
    """This host has no key ring, and none may be created for its store here."""


class MissingKeyError(SecretKeyError):
    """A value is sealed under a key id the key ring does not hold."""


class SealedValueTamperedError(SecretKeyError):
    """A sealed value fails authentication under the key its id names."""


class DuplicateKeyIdError(SecretKeyError):
    """A key id appears more than once where a key ring is defined."""


# --- stored history ----------------------------------------------------------


def _shown(text: object, limit: int = 120) -> str:
    """Stored text as a quoted, escaped, bounded literal: it may be anything."""
    shown = repr(str(text))
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


class DamagedHistoryError(SecStateError):
    """A stored event cannot be trusted or read: untrusted topic, undecodable, out of sequence."""

    def __init__(
        self,
        problem: str,
        *,
        originator_id: object,
        originator_version: int | None,
        topic: str | None,
        position: int | None = None,
        snapshot: bool = False,
    ) -> None:
        self.problem = problem
        self.originator_id = originator_id
        self.originator_version = originator_version
        self.topic = topic
        self.position = position
        self.snapshot = snapshot
        super().__init__(self._message())

    def _message(self) -> str:
        if self.snapshot:
            where = f"the snapshot of {self.originator_id} at version {self.originator_version}"
            advice = "; snapshots are a cache: deleting it loses nothing"
        else:
            at = f"position {self.position}" if self.position is not None else "an unknown position"
            where = f"{at} (aggregate {self.originator_id}, version {self.originator_version}"
            where += f", topic {_shown(self.topic)})" if self.topic is not None else ")"
            advice = ""
        return f"stored history is damaged at {where}: {self.problem}{advice}"

    def at_position(self, position: int | None) -> DamagedHistoryError:
        """The same error, naming the log position once it is known."""
        if position is None or self.position is not None:
            return self
        located = type(self).__new__(type(self))
        located.__dict__.update(self.__dict__)
        located.position = position
        located.args = (located._message(),)
        return located

    def __str__(self) -> str:
        return self._message()


class UntrustedTopicError(DamagedHistoryError):
    """A stored row names a topic that is not one of the ledger's own classes."""
