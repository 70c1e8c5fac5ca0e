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


class WrongPasswordError(SecStateError):
    """The current password given to confirm a change is wrong."""


class LoginRefusedError(SecStateError):
    """A login was refused; the refusal itself has been recorded."""

    def __init__(self, username: str, reason: str) -> None:
        self.username = username
        self.reason = reason
        super().__init__(f"login refused for {username!r}: {reason}")


class PasswordResetRequiredError(SecStateError):
    """The user must reset the password before doing this."""


class PasswordResetNotRequiredError(SecStateError):
    """Completing a reset was asked for a user with no pending reset."""


class UserDisabledError(SecStateError):
    """The user is disabled and may not act or be acted upon this way."""


class UserNotLockedError(SecStateError):
    """Unlocking was asked for a user that is not locked."""


# --- API keys --------------------------------------------------------------


class ApiKeyAlreadyRevokedError(SecStateError):
    """The API key was revoked before."""


class MalformedApiKeyError(SecStateError):
    """The presented API key is not in secstate's format or its checksum is wrong."""


class ApiKeyRejectedError(SecStateError):
    """The presented API key does not authenticate (unknown, revoked or wrong secret)."""


# --- second factors --------------------------------------------------------


class InvalidTotpCodeError(SecStateError):
    """The TOTP code is wrong for the factor at this time."""


class TotpReplayError(SecStateError):
    """The TOTP code was already used in its time step."""


class NoPendingEnrolmentError(SecStateError):
    """There is no started, unconfirmed enrolment with that id."""


class NoRecoveryCodesError(SecStateError):
    """The user has no unused recovery codes."""


class SecondFactorRequiredError(SecStateError):
    """The account's policy demands a second factor the user lacks or did not give."""


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


class SecretKeyError(SecStateError):
    """A sealed secret cannot be opened: unknown key id or tampered ciphertext."""
