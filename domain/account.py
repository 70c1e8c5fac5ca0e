"""The Account aggregate: a customer account or the staff organisation.

It owns the account-wide security controls: members, IP allowlist, API keys, sending
domains' DKIM keys and the 2FA policy.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from domain.context import Stamp
from domain.errors import (
    AccountKindError,
    ApiKeyAlreadyRevokedError,
    DkimKeyStateError,
    DkimSelectorInUseError,
    SelfLockoutError,
    UnknownAllowlistEntryError,
    UnknownApiKeyError,
    UnknownDkimKeyError,
)
from domain.rules import (
    check_not_covered,
    ip_in_networks,
    normalise_ip,
    normalise_network,
    parse_cidr,
)
from domain.secrets import ApiKeyCodec, IssuedApiKey, KeyRing, generate_dkim_key
from domain.values import (
    AccountKind,
    AllowlistEntry,
    ApiKey,
    ContextEvent,
    DkimKey,
    DkimKeyState,
    Member,
    natural_id,
)


def dkim_aad(account_id: uuid.UUID, domain: str, selector: str) -> bytes:
    # Binds a sealed private key to its account/domain/selector: a copied blob won't open.
    return f"dkim:{account_id}:{domain}:{selector}".encode()


class Account(Aggregate):
    TOPIC = "secstate.Account"

    class Event(ContextEvent):
        TOPIC = "secstate.Account.Event"

    class Opened(Event, Aggregate.Created):
        TOPIC = "secstate.Account.Opened"
        class_version = 1
        name: str
        kind: str
        display_name: str

        def apply(self, account: Account) -> None:
            account.name = self.name
            account.kind = self.kind
            account.display_name = self.display_name
            account.opened_at = self.occurred_at
            account.two_factor_required = False
            account.members = {}
            account.allowlist = {}
            account.api_keys = {}
            account.dkim_keys = {}

    class TwoFactorPolicyChanged(Event):
        TOPIC = "secstate.Account.TwoFactorPolicyChanged"
        class_version = 1
        required: bool

        def apply(self, account: Account) -> None:
            account.two_factor_required = self.required

    class MemberAdded(Event):
        TOPIC = "secstate.Account.MemberAdded"
        class_version = 1
        user_id: str
        username: str
        role: str

        def apply(self, account: Account) -> None:
            account.members[self.user_id] = Member(
                self.user_id, self.username, self.role, self.occurred_at
            )

    class AllowlistEntryAdded(Event):
        TOPIC = "secstate.Account.AllowlistEntryAdded"
        class_version = 1
        entry_id: str
        cidr: str
        label: str

        def apply(self, account: Account) -> None:
            account.allowlist[self.entry_id] = AllowlistEntry(
                self.entry_id,
                self.cidr,
                self.label,
                self.occurred_at,
                f"{self.actor_kind}:{self.actor_id}",
            )

    class AllowlistEntryRemoved(Event):
        TOPIC = "secstate.Account.AllowlistEntryRemoved"
        class_version = 1
        entry_id: str
        cidr: str
        forced: bool

        def apply(self, account: Account) -> None:
            del account.allowlist[self.entry_id]

    class ControlPanelAccessAllowed(Event):
        TOPIC = "secstate.Account.ControlPanelAccessAllowed"
        class_version = 1
        ip: str
        entry_id: str | None  # None: the allowlist is empty, so every IP may enter

        def apply(self, account: Account) -> None:
            pass

    class ControlPanelAccessDenied(Event):
        TOPIC = "secstate.Account.ControlPanelAccessDenied"
        class_version = 1
        ip: str

        def apply(self, account: Account) -> None:
            pass

    class ApiKeyCreated(Event):
        TOPIC = "secstate.Account.ApiKeyCreated"
        class_version = 1
        key_id: str
        name: str
        scopes: list[str]
        display: str
        secret_hash: str

        def apply(self, account: Account) -> None:
            account.api_keys[self.key_id] = ApiKey(
                key_id=self.key_id,
                name=self.name,
                scopes=list(self.scopes),
                display=self.display,
                secret_hash=self.secret_hash,
                created_by=f"{self.actor_kind}:{self.actor_id}",
                created_at=self.occurred_at,
            )

    class ApiKeyRevoked(Event):
        TOPIC = "secstate.Account.ApiKeyRevoked"
        class_version = 1
        key_id: str
        reason: str

        def apply(self, account: Account) -> None:
            key = account.api_keys[self.key_id]
            key.revoked_at = self.occurred_at
            key.revoked_by = f"{self.actor_kind}:{self.actor_id}"
            key.revoke_reason = self.reason

    class DkimKeyGenerated(Event):
        TOPIC = "secstate.Account.DkimKeyGenerated"
        class_version = 1
        domain: str
        selector: str
        algorithm: str
        public_key: str
        sealed_private_key: str
        campaign_id: str | None

        def apply(self, account: Account) -> None:
            account.dkim_keys[dkim_ref(self.domain, self.selector)] = DkimKey(
                domain=self.domain,
                selector=self.selector,
                algorithm=self.algorithm,
                public_key=self.public_key,
                sealed_private_key=self.sealed_private_key,
                state=DkimKeyState.GENERATED.value,
                generated_at=self.occurred_at,
                campaign_id=self.campaign_id,
            )

    class DkimKeyPublished(Event):
        TOPIC = "secstate.Account.DkimKeyPublished"
        class_version = 1
        domain: str
        selector: str

        def apply(self, account: Account) -> None:
            key = account.dkim_keys[dkim_ref(self.domain, self.selector)]
            key.state = DkimKeyState.PUBLISHED.value
            key.published_at = self.occurred_at

    class DkimKeyActivated(Event):
        TOPIC = "secstate.Account.DkimKeyActivated"
        class_version = 1
        domain: str
        selector: str

        def apply(self, account: Account) -> None:
            key = account.dkim_keys[dkim_ref(self.domain, self.selector)]
            key.state = DkimKeyState.ACTIVE.value
            key.activated_at = self.occurred_at

    class DkimKeyRetired(Event):
        TOPIC = "secstate.Account.DkimKeyRetired"
        class_version = 1
        domain: str
        selector: str
        reason: str

        def apply(self, account: Account) -> None:
            key = account.dkim_keys[dkim_ref(self.domain, self.selector)]
            key.state = DkimKeyState.RETIRED.value
            key.retired_at = self.occurred_at
            key.retire_reason = self.reason

    # Set by the events above; declared only for type checkers, since class-level
    # annotations would make the library build a dataclass __init__ from them.
    if TYPE_CHECKING:
        name: str
        kind: str
        display_name: str
        opened_at: datetime
        two_factor_required: bool
        members: dict[str, Member]
        allowlist: dict[str, AllowlistEntry]
        api_keys: dict[str, ApiKey]
        dkim_keys: dict[str, DkimKey]

    @staticmethod
    def create_id(name: str) -> uuid.UUID:
        return natural_id("account", name.strip().lower())

    @classmethod
    def open(cls, name: str, kind: AccountKind, display_name: str, stamp: Stamp) -> Account:
        return cls._create(
            cls.Opened, name=name, kind=kind.value, display_name=display_name, **stamp.fields()
        )

    def _emit(self, event_class: type[Account.Event], stamp: Stamp, **fields: Any) -> None:
        self.trigger_event(event_class, **stamp.fields(), **fields)

    # --- policy and members -------------------------------------------------------

    def set_two_factor_policy(self, required: bool, stamp: Stamp) -> bool:
        """Returns False (and records nothing) when the policy is already as asked."""
        if self.two_factor_required == required:
            return False
        self._emit(self.TwoFactorPolicyChanged, stamp, required=required)
        return True

    def add_member(self, user_id: uuid.UUID, username: str, role: str, stamp: Stamp) -> None:
        if role == "employee" and self.kind != AccountKind.STAFF:
            raise AccountKindError(
                f"only the staff organisation has employees; {self.name!r} is a {self.kind} account"
            )
        if role != "employee" and self.kind == AccountKind.STAFF:
            raise AccountKindError(
                f"members of the staff organisation {self.name!r} are "
                "employees, not owners or teammates"
            )
        self._emit(self.MemberAdded, stamp, user_id=str(user_id), username=username, role=role)

    # --- allowlist ----------------------------------------------------------------

    def add_allowlist_entry(self, cidr: str, label: str, stamp: Stamp) -> str:
        network = parse_cidr(cidr)
        check_not_covered(network, {e.entry_id: e.cidr for e in self.allowlist.values()})
        entry_id = "ale_" + secrets.token_hex(6)
        self._emit(
            self.AllowlistEntryAdded, stamp, entry_id=entry_id, cidr=str(network), label=label
        )
        return entry_id

    def find_allowlist_entry(self, ref: str) -> AllowlistEntry:
        """By entry id, or by CIDR text (normalised)."""
        if ref in self.allowlist:
            return self.allowlist[ref]
        try:
            wanted = str(normalise_network(ref, strict=False))
        except ValueError:
            wanted = None
        for entry in self.allowlist.values():
            if entry.cidr == wanted:
                return entry
        raise UnknownAllowlistEntryError(f"account {self.name!r} has no allowlist entry {ref!r}")

    def remove_allowlist_entry(self, ref: str, stamp: Stamp, *, force: bool = False) -> str:
        entry = self.find_allowlist_entry(ref)
        caller_ip = stamp.ctx.source_ip
        if caller_ip and not force:
            remaining = {k: e.cidr for k, e in self.allowlist.items() if k != entry.entry_id}
            was_allowed = ip_in_networks(caller_ip, {entry.entry_id: entry.cidr}) is not None
            # An empty allowlist lets everyone in, so emptying it never locks the caller out.
            if was_allowed and remaining and ip_in_networks(caller_ip, remaining) is None:
                raise SelfLockoutError(
                    f"removing {entry.cidr} would lock your IP {caller_ip} out of the control "
                    "panel of this account; use force to do it anyway"
                )
        self._emit(
            self.AllowlistEntryRemoved,
            stamp,
            entry_id=entry.entry_id,
            cidr=entry.cidr,
            forced=force,
        )
        return entry.entry_id

    def allowlist_decision(self, ip: str) -> tuple[bool, str | None]:
        if not self.allowlist:
            return True, None
        entry_id = ip_in_networks(ip, {k: e.cidr for k, e in self.allowlist.items()})
        return entry_id is not None, entry_id

    def check_control_panel_access(self, ip: str, stamp: Stamp) -> bool:
        ip = normalise_ip(ip)
        allowed, entry_id = self.allowlist_decision(ip)
        if allowed:
            self._emit(self.ControlPanelAccessAllowed, stamp, ip=ip, entry_id=entry_id)
        else:
            self._emit(self.ControlPanelAccessDenied, stamp, ip=ip)
        return allowed

    # --- API keys -----------------------------------------------------------------

    def create_api_key(
        self, name: str, scopes: list[str], codec: ApiKeyCodec, stamp: Stamp
    ) -> IssuedApiKey:
        issued = codec.issue()
        self._emit(
            self.ApiKeyCreated,
            stamp,
            key_id=issued.key_id,
            name=name,
            scopes=sorted(set(scopes)),
            display=issued.display,
            secret_hash=issued.secret_hash,
        )
        return issued

    def get_api_key(self, key_id: str) -> ApiKey:
        try:
            return self.api_keys[key_id]
        except KeyError:
            raise UnknownApiKeyError(
                f"account {self.name!r} has no API key with id {key_id!r}"
            ) from None

    def revoke_api_key(self, key_id: str, reason: str, stamp: Stamp) -> None:
        key = self.get_api_key(key_id)
        if not key.active:
            raise ApiKeyAlreadyRevokedError(
                f"API key {key_id!r} ({key.name}) was already revoked at "
                f"{key.revoked_at.isoformat() if key.revoked_at else '?'}"
            )
        self._emit(self.ApiKeyRevoked, stamp, key_id=key_id, reason=reason)

    # --- DKIM ---------------------------------------------------------------------

    def get_dkim_key(self, domain: str, selector: str) -> DkimKey:
        try:
            return self.dkim_keys[dkim_ref(domain, selector)]
        except KeyError:
            raise UnknownDkimKeyError(
                f"account {self.name!r} has no DKIM key {selector}._domainkey.{domain}"
            ) from None

    def generate_dkim_key(
        self,
        domain: str,
        selector: str,
        algorithm: str,
        keyring: KeyRing,
        stamp: Stamp,
        *,
        campaign_id: str | None = None,
        rsa_bits: int = 2048,
    ) -> DkimKey:
        domain, selector = domain.lower(), selector.lower()
        if dkim_ref(domain, selector) in self.dkim_keys:
            raise DkimSelectorInUseError(
                f"selector {selector!r} is already used for {domain} in account {self.name!r}; "
                "pick a new selector so the old key stays verifiable during rotation"
            )
        material = generate_dkim_key(algorithm, rsa_bits=rsa_bits)
        sealed = keyring.seal(material.private_key_pem, dkim_aad(self.id, domain, selector))
        self._emit(
            self.DkimKeyGenerated,
            stamp,
            domain=domain,
            selector=selector,
            algorithm=algorithm,
            public_key=material.public_key_b64,
            sealed_private_key=sealed,
            campaign_id=campaign_id,
        )
        return self.dkim_keys[dkim_ref(domain, selector)]

    def publish_dkim_key(self, domain: str, selector: str, stamp: Stamp) -> None:
        key = self.get_dkim_key(domain, selector)
        _check_dkim_state(key, DkimKeyState.GENERATED, "publish")
        self._emit(self.DkimKeyPublished, stamp, domain=key.domain, selector=key.selector)

    def activate_dkim_key(self, domain: str, selector: str, stamp: Stamp) -> list[str]:
        """Activate a published key and retire the domain's previously active one(s)."""
        key = self.get_dkim_key(domain, selector)
        _check_dkim_state(key, DkimKeyState.PUBLISHED, "activate")
        self._emit(self.DkimKeyActivated, stamp, domain=key.domain, selector=key.selector)
        retired = []
        for other in list(self.dkim_keys.values()):
            if (
                other.domain == key.domain
                and other.selector != key.selector
                and other.state == DkimKeyState.ACTIVE
            ):
                self._emit(
                    self.DkimKeyRetired,
                    stamp,
                    domain=other.domain,
                    selector=other.selector,
                    reason=f"superseded by {key.selector}",
                )
                retired.append(other.selector)
        return retired

    def retire_dkim_key(self, domain: str, selector: str, reason: str, stamp: Stamp) -> None:
        key = self.get_dkim_key(domain, selector)
        if key.state == DkimKeyState.RETIRED:
            raise DkimKeyStateError(f"DKIM key {selector}._domainkey.{domain} is already retired")
        self._emit(
            self.DkimKeyRetired, stamp, domain=key.domain, selector=key.selector, reason=reason
        )

    def open_dkim_private_key(self, domain: str, selector: str, keyring: KeyRing) -> bytes:
        """The PEM, for the signer that needs it; never put it in an event or a log."""
        key = self.get_dkim_key(domain, selector)
        return keyring.open(key.sealed_private_key, dkim_aad(self.id, key.domain, key.selector))


def dkim_ref(domain: str, selector: str) -> str:
    return f"{selector.lower()}._domainkey.{domain.lower()}"


def _check_dkim_state(key: DkimKey, expected: DkimKeyState, action: str) -> None:
    if key.state != expected:
        raise DkimKeyStateError(
            f"cannot {action} DKIM key {key.selector}._domainkey.{key.domain}: it is "
            f"{key.state}, expected {expected.value}"
        )


class ApiKeyIndex(Aggregate):
    """One API key's record of use: maps its id to its account (the O(1) lookup before the
    constant-time check) and records where and when it was presented."""

    TOPIC = "secstate.ApiKeyIndex"

    class Event(ContextEvent):
        TOPIC = "secstate.ApiKeyIndex.Event"

    class Indexed(Event, Aggregate.Created):
        TOPIC = "secstate.ApiKeyIndex.Indexed"
        class_version = 1
        key_id: str
        account_id: uuid.UUID

        def apply(self, index: ApiKeyIndex) -> None:
            index.key_id = self.key_id
            index.account_id = self.account_id
            index.last_used_at = None
            index.last_used_ip = None
            index.last_used_agent = None

    class Used(Event):
        """The key authenticated a request (recorded at most once per interval and place)."""

        TOPIC = "secstate.ApiKeyIndex.Used"
        class_version = 1
        key_id: str
        account_id: uuid.UUID

        def apply(self, index: ApiKeyIndex) -> None:
            index.last_used_at = self.occurred_at
            index.last_used_ip = self.source_ip
            index.last_used_agent = self.user_agent

    class UseRefused(Event):
        """The key id was presented with a wrong secret, or after the key was revoked."""

        TOPIC = "secstate.ApiKeyIndex.UseRefused"
        class_version = 1
        key_id: str
        account_id: uuid.UUID
        reason: str

        def apply(self, index: ApiKeyIndex) -> None:
            pass

    if TYPE_CHECKING:
        key_id: str
        account_id: uuid.UUID
        last_used_at: datetime | None
        last_used_ip: str | None
        last_used_agent: str | None

    @staticmethod
    def create_id(key_id: str) -> uuid.UUID:
        return natural_id("api-key", key_id)

    @classmethod
    def index(cls, key_id: str, account_id: uuid.UUID, stamp: Stamp) -> ApiKeyIndex:
        return cls._create(cls.Indexed, key_id=key_id, account_id=account_id, **stamp.fields())

    def use_is_news(self, stamp: Stamp, interval: timedelta) -> bool:
        """Whether a use is worth an event: the first, from a new place (IP or user agent),
        or ``interval`` after the last one recorded (zero: every use)."""
        last = getattr(self, "last_used_at", None)
        return (
            last is None
            or stamp.ctx.source_ip != getattr(self, "last_used_ip", None)
            or stamp.ctx.user_agent != getattr(self, "last_used_agent", None)
            or stamp.occurred_at - last >= interval
        )

    def record_use(self, stamp: Stamp) -> None:
        self.trigger_event(
            self.Used, key_id=self.key_id, account_id=self.account_id, **stamp.fields()
        )

    def refuse_use(self, reason: str, stamp: Stamp) -> None:
        self.trigger_event(
            self.UseRefused,
            key_id=self.key_id,
            account_id=self.account_id,
            reason=reason,
            **stamp.fields(),
        )
