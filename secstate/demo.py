"""Replay a 2015-style breach into the configured store: the ``secstate demo`` generator.

The story, all stamped in 2014/2015 with a ``SteppedClock``-style domain time:

1. a mail provider's staff organisation (``demomail-staff``) and its employees;
2. customer accounts onboarded through 2014: owners, teammates, API keys, TOTP (enrolled
   and confirmed with real codes), recovery codes, IPv4/IPv6 allowlists, custom DKIM keys;
3. weeks of normal activity from 2015-01-05: logins (some failed), control-panel access
   checks, API-key rotations, a credential-stuffing bot that locks a few users;
4. an attacker with employee ``e-042``'s password, from 203.0.113.0/24 and 2001:db8::/32,
   on three separate nights, reading customer records in internal systems;
5. the response: the employee disabled, 2FA required for staff, a system-wide forced
   password reset campaign, DKIM keys of the custom-key accounts rotated, users resetting.

Volume is built with the domain methods on in-memory aggregates and saved with
``ledger.save(*aggregates)`` in batches (one transaction each); the response's commands
go through the ledger itself. Synthetic users get a deliberately cheap argon2id profile
(t=1, m=8 KiB, p=1) so a million events take minutes, not hours: demo data only.

Every random choice comes from ``random.Random(seed)``, so a seed fixes the story and
the event types and counts; secrets (salts, API keys, TOTP seeds, ids) stay random.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TypeVar

from eventsourcing.domain import Aggregate
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain import commands as cmd
from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
from domain.catalogue import event_type_name
from domain.commands import describe_validation_error
from domain.context import Actor, ActorKind, RequestContext, Stamp, SteppedClock
from domain.errors import InvalidCommandError, SecStateError
from domain.ledger import Ledger
from domain.secrets import Argon2Parameters, PasswordHasher, totp_code_at_step, totp_step
from domain.user import User
from domain.values import AccountKind, Role
from projections.source import LogSource
from secstate.bootstrap import build_ledger
from secstate.settings import Settings

# --- the story's constants --------------------------------------------------------------

STAFF_ORG = "demomail-staff"
ATTACKED_EMPLOYEE = "e-042"
PASSWORD_CAMPAIGN = "inc-2015-02-password-reset"  # noqa: S105 - a campaign id
DKIM_CAMPAIGN = "inc-2015-02-dkim-rotation"
INCIDENT_ID = "INC-2015-0042"

# Documentation and benchmarking ranges only, so no real network appears in the demo.
ATTACKER_NET_V4 = ipaddress.IPv4Network("203.0.113.0/24")  # TEST-NET-3
ATTACKER_NET_V6 = ipaddress.IPv6Network("2001:db8::/32")  # IPv6 documentation
STAFF_OFFICE_NET = ipaddress.IPv4Network("198.51.100.0/24")  # TEST-NET-2
BOT_NET = ipaddress.IPv4Network("192.0.2.0/24")  # TEST-NET-1: a credential-stuffing bot
CUSTOMER_NET_V4 = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking
CUSTOMER_NET_V6 = ipaddress.IPv6Network("3fff::/20")  # RFC 9637 documentation
INTERNAL_JOB_IP = "10.20.0.5"  # the host that runs the DKIM rotation job
INTERNAL_ADMIN_IP = "10.20.0.7"  # provisioning and HR sync

STAFF_FOUNDED = datetime(2013, 6, 3, 9, 0, tzinfo=UTC)
ONBOARDING_FIRST_DAY = date(2014, 1, 6)
ONBOARDING_DAYS = 347  # through 2014-12-18
ACTIVITY_START = date(2015, 1, 5)  # a Monday

# Demo data only: a cheap argon2id so millions of synthetic events stay fast.
DEMO_ARGON2 = Argon2Parameters(time_cost=1, memory_cost_kib=8, parallelism=1)
DEMO_ARGON2_TEXT = "argon2id t=1 m=8KiB p=1 (synthetic demo users only)"

# Tuned so a customer account produces ~55 events over the default 8 weeks.
P_LOGIN_WEEKDAY = 0.15
P_LOGIN_WEEKEND = 0.025
PAGE_VIEWS = (1, 1, 2, 2, 3, 4)  # control-panel requests per visit
P_TYPO = 0.05
P_AWAY = 0.10
P_RECOVERY_LOGIN = 0.03
P_KEY_ROTATION = 0.004
P_RESET_ON_VISIT = 0.45
P_KEY_ROTATION_AFTER_NOTICE = 0.3
SHARE_CUSTOM_DKIM = 0.2
SHARE_ALLOWLIST = 0.3
SHARE_ALLOWLIST_V6 = 0.4
SHARE_2FA_POLICY = 0.1
SHARE_TOTP = 0.25
SHARE_RECOVERY_CODES = 0.8
MAX_ACCOUNTS_PER_ACCESS = 250
AUTO_RSA_MAX_ACCOUNTS = 20  # RSA keygen costs ~0.1 s a key; ed25519 beyond that

BROWSERS = (
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/40.0.2214.111 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/600.3.18 (KHTML, like Gecko) "
    "Version/8.0.3 Safari/600.3.18",
    "Mozilla/5.0 (Windows NT 6.3; WOW64; rv:35.0) Gecko/20100101 Firefox/35.0",
    "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 8_1_3 like Mac OS X) AppleWebKit/600.1.4 "
    "(KHTML, like Gecko) Version/8.0 Mobile/12B466 Safari/600.1.4",
)
STAFF_BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/40.0.2214.115 Safari/537.36"
)
ATTACKER_BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:31.0) Gecko/20100101 Firefox/31.0"
ATTACKER_TOOL = "python-requests/2.5.1 CPython/2.7.6 Linux/3.13.0-44-generic"
BOT_AGENT = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"
LEAKED_USERNAMES = ("admin", "administrator", "test", "info", "postmaster", "webmaster")
ADMIN_TOOL = "demomail-admin/3.2 (secstate)"
ROTATOR_AGENT = "dkim-rotator/1.0"

FIRST_NAMES = (  # noqa: SIM905 - word lists read better as text
    "ada alan anna ben carla chen dana emil eva farah gia hana ivan jade jonas kai lena "
    "liam maya mina nils noor omar paula quinn raj rosa sam sara tariq uma vera wei yara "
    "zoe"
).split()
LAST_NAMES = (  # noqa: SIM905 - word lists read better as text
    "adams baker cruz diaz evans fischer garcia hughes ito jensen kim lopez meyer novak "
    "okafor patel quist rossi silva tanaka umar vogel wong xu young zhang"
).split()
ADJECTIVES = (  # noqa: SIM905 - word lists read better as text
    "amber bright brisk calm clever cosy crisp daring eager fair gentle golden happy "
    "keen lucky merry noble polar quick rapid silver smart snowy sunny swift tidy urban "
    "vivid"
).split()
NOUNS = (  # noqa: SIM905 - word lists read better as text
    "bakery books cafe clinic cycles dental design florist foods garage gym hotel labs "
    "market media motors music optics pets press print shoes studio tech tours toys "
    "wines"
).split()


# --- options and results ----------------------------------------------------------------


class DemoOptions(BaseModel):
    """What to generate; validated before anything touches the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accounts: int = Field(default=50, ge=1, le=1_000_000, description="customer accounts")
    seed: int = Field(default=2015, description="fixes every random choice of the story")
    weeks: int = Field(default=8, ge=3, le=52, description="weeks of activity from 2015-01-05")
    employees: int = Field(default=15, ge=5, le=999, description="staff employees")
    batch_events: int = Field(
        default=10_000, ge=100, le=200_000, description="events per save (one transaction)"
    )
    dkim_algorithm: Literal["auto", "rsa-sha256", "ed25519-sha256"] = Field(
        default="auto",
        description="auto: RSA when at most 20 accounts have custom keys, else ed25519",
    )


def parse_demo_options(**data: Any) -> DemoOptions:
    """Validate raw options, naming every bad one (InvalidCommandError)."""
    try:
        return DemoOptions.model_validate(data)
    except ValidationError as e:
        raise InvalidCommandError("demo options", describe_validation_error(e)) from None


T = TypeVar("T")


class DemoStoryError(SecStateError):
    """The generator reached a step its story had not set up (a bug of the demo)."""


def _present(value: T | None, what: str) -> T:
    """``value``, which the story must have set up by now."""
    if value is None:
        raise DemoStoryError(f"the demo has no {what} at this point of the story")
    return value


class DemoRefusedError(SecStateError):
    """The demo only replays into an empty store."""


@dataclass
class AttackerSession:
    day: date
    ips: list[str]
    user_agents: list[str]
    logins_succeeded: int
    logins_failed: int
    accesses: int
    records_read: int
    customer_accounts_touched: int
    systems: list[str]


@dataclass
class DemoSummary:
    store: str
    seed: int
    accounts: int
    employees: int
    users: int
    period_start: datetime
    period_end: datetime
    events_total: int
    events_by_type: dict[str, int]
    elapsed_seconds: float
    cpu_seconds: float  # this process only; steadier than wall time on a busy machine
    events_per_second: float
    password_hasher: str
    password_campaign: str
    users_marked_for_reset: int
    resets_completed: int
    users_still_needing_reset: int
    attacker_employee: str
    attacker_sessions: list[AttackerSession]
    attacker_customer_accounts_touched: int
    attacker_customer_accounts_sample: list[str]
    attacker_refused_after_disable: int
    dkim_campaign: str
    dkim_algorithm: str
    dkim_keys_rotated: int
    dkim_keys_retired: int


ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; phases arrive in order and each ends at done == total."""


# --- the simulation ----------------------------------------------------------------------


@dataclass(eq=False)
class _SimAccount:
    account: Account
    tz_hours: int
    office_v4: ipaddress.IPv4Network
    office_v6: ipaddress.IPv6Network | None
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    api_keys: list[str] = field(default_factory=list)
    users: list[_SimUser] = field(default_factory=list)


@dataclass(eq=False)
class _SimUser:
    user: User
    password: str
    home: _SimAccount
    usual_ip: str
    away_ip: str
    user_agent: str
    actor: Actor
    totp_seed: str | None = None
    recovery_codes: list[str] = field(default_factory=list)


class _Writer:
    """Collects touched aggregates and saves them together: one transaction per batch."""

    def __init__(self, ledger: Ledger, batch_events: int, counts: Counter[str]) -> None:
        self.ledger = ledger
        self.batch_events = batch_events
        self.counts = counts
        self._dirty: dict[uuid.UUID, tuple[Aggregate, int]] = {}
        self._pending = 0

    def touch(self, *aggregates: Aggregate) -> None:
        for aggregate in aggregates:
            _, counted = self._dirty.get(aggregate.id, (aggregate, 0))
            now = len(aggregate.pending_events)
            self._pending += now - counted
            self._dirty[aggregate.id] = (aggregate, now)
        if self._pending >= self.batch_events:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        aggregates = [a for a, _ in self._dirty.values()]
        for aggregate in aggregates:
            for event in aggregate.pending_events:
                self.counts[event_type_name(event)] += 1
        self.ledger.save_chronologically(*aggregates)
        self._dirty.clear()
        self._pending = 0


Process = Iterator[datetime]
"""A simulated activity: each step runs at the moment the previous step yielded."""


def _once(fn: Callable[[], None]) -> Process:
    fn()
    yield from ()


class _Simulation:
    """Runs every step of every activity in domain-time order, from one time-ordered queue.

    Each aggregate's events therefore follow its versions in ``occurred_at`` order (the
    point-in-time replay relies on it), and the log follows domain time closely.
    """

    def __init__(
        self,
        ledger: Ledger,
        clock: SteppedClock,
        options: DemoOptions,
        rsa_bits: int,
        progress: ProgressFn | None,
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.options = options
        self.rsa_bits = rsa_bits
        self.progress = progress or (lambda phase, done, total: None)
        self.rng = random.Random(options.seed)
        self.hasher = PasswordHasher(DEMO_ARGON2)
        self.keyring = ledger.keyring
        self.counts: Counter[str] = Counter()
        self.writer = _Writer(ledger, options.batch_events, self.counts)
        self.queue: list[tuple[datetime, int, Process]] = []
        self.seq = 0
        self.customers: list[_SimAccount] = []
        self.staff_org: _SimAccount | None = None
        self.employees: list[_SimUser] = []
        self.attacked: _SimUser | None = None
        self.responder: _SimUser | None = None
        days = options.weeks * 7
        self.activity_days = [ACTIVITY_START + timedelta(days=d) for d in range(days)]
        self.response_day = self.activity_days[-7]
        self.attack_days = [self.response_day - timedelta(days=d) for d in (13, 8, 3)]
        n_custom = max(1, round(options.accounts * SHARE_CUSTOM_DKIM))
        if options.dkim_algorithm == "auto":
            self.dkim_algorithm = (
                "rsa-sha256" if n_custom <= AUTO_RSA_MAX_ACCOUNTS else "ed25519-sha256"
            )
        else:
            self.dkim_algorithm = options.dkim_algorithm
        self.custom_dkim = set(self.rng.sample(range(options.accounts), n_custom))
        self.sessions: dict[date, AttackerSession] = {}
        self.attacker_accounts: set[str] = set()
        self.refused_after_disable = 0
        self.marked_for_reset = 0
        self.resets_completed = 0
        self.dkim_rotated = 0
        self.dkim_retired = 0
        self.onboarded = 0
        self.period_end = STAFF_FOUNDED

    # --- the clockwork ---------------------------------------------------------------

    def spawn(self, at: datetime, process: Process) -> None:
        self.seq += 1  # ties run in spawn order, so a seed fixes the whole order
        heapq.heappush(self.queue, (at, self.seq, process))

    def run_until(self, limit: datetime | None) -> None:
        """Run every step due before ``limit`` (all of them if None), earliest first."""
        while self.queue and (limit is None or self.queue[0][0] < limit):
            at, seq, process = heapq.heappop(self.queue)
            next_at = next(process, None)
            if next_at is not None:
                if next_at < at:
                    raise RuntimeError(f"a demo activity stepped back in time at {at}")
                heapq.heappush(self.queue, (next_at, seq, process))

    # --- helpers ---------------------------------------------------------------------

    def ctx(self, actor: Actor, ip: str | None, user_agent: str) -> RequestContext:
        return RequestContext(
            actor=actor,
            source_ip=ip,
            user_agent=user_agent,
            request_id=f"req_{self.rng.getrandbits(64):016x}",
        )

    def stamp(self, actor: Actor, ip: str | None, user_agent: str, at: datetime) -> Stamp:
        self.period_end = max(self.period_end, at)
        return Stamp(self.ctx(actor, ip, user_agent), at)

    def password(self) -> str:
        alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_!"
        return "".join(self.rng.choice(alphabet) for _ in range(16))

    def ipv4_in(self, net: ipaddress.IPv4Network) -> str:
        return str(net.network_address + self.rng.randrange(1, net.num_addresses - 1))

    def ipv6_in(self, net: ipaddress.IPv6Network) -> str:
        return str(net.network_address + self.rng.randrange(1, net.num_addresses - 1))

    def at(self, day: date, hour: float) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
            seconds=int(hour * 3600)
        )

    def register(
        self,
        sa: _SimAccount,
        username: str,
        email: str,
        role: Role,
        stamp: Stamp,
        actor_kind: ActorKind,
        usual_ip: str,
        away_ip: str,
        user_agent: str,
    ) -> _SimUser:
        password = self.password()
        user = User.register(sa.account.id, username, email, role, stamp)
        user.set_password(password, self.hasher, stamp)
        sa.account.add_member(user.id, username, role.value, stamp)
        self.writer.touch(user, sa.account)
        su = _SimUser(
            user, password, sa, usual_ip, away_ip, user_agent, Actor(actor_kind, username)
        )
        sa.users.append(su)
        return su

    def enrol_totp(self, su: _SimUser, at: datetime, ip: str, recovery: bool) -> Process:
        factor_id, seed = su.user.start_totp_enrolment(
            "authenticator app", self.keyring, self.stamp(su.actor, ip, su.user_agent, at)
        )
        self.writer.touch(su.user)
        at += timedelta(seconds=45)
        yield at
        # The code the user's app shows at that moment, from the seed shown once.
        code = totp_code_at_step(seed, totp_step(at))
        su.user.confirm_totp_enrolment(
            factor_id,
            code,
            self.keyring,
            self.ledger.lockout_threshold,
            self.stamp(su.actor, ip, su.user_agent, at),
        )
        su.totp_seed = seed
        self.writer.touch(su.user)
        if recovery:
            at += timedelta(seconds=20)
            yield at
            su.recovery_codes = su.user.generate_recovery_codes(
                10, self.stamp(su.actor, ip, su.user_agent, at)
            )
            self.writer.touch(su.user)

    def login(
        self,
        su: _SimUser,
        at: datetime,
        ip: str,
        user_agent: str,
        *,
        password: str | None = None,
        actor: Actor | None = None,
    ) -> bool:
        user = su.user
        totp_code = recovery_code = None
        if su.totp_seed is not None:
            if su.recovery_codes and self.rng.random() < P_RECOVERY_LOGIN:
                recovery_code = su.recovery_codes.pop()
            else:
                totp_code = totp_code_at_step(su.totp_seed, totp_step(at))
        outcome = user.login(
            su.password if password is None else password,
            totp_code=totp_code,
            recovery_code=recovery_code,
            two_factor_required=su.home.account.two_factor_required,
            lockout_threshold=self.ledger.lockout_threshold,
            hasher=self.hasher,
            keyring=self.keyring,
            stamp=self.stamp(actor or su.actor, ip, user_agent, at),
        )
        self.writer.touch(user)
        return outcome.allowed

    # --- phase 1: the staff organisation ------------------------------------------------

    def found_staff(self) -> None:
        rng = self.rng
        founder = Actor(ActorKind.SYSTEM, "provisioning")
        stamp = self.stamp(founder, INTERNAL_ADMIN_IP, ADMIN_TOOL, STAFF_FOUNDED)
        org = Account.open(STAFF_ORG, AccountKind.STAFF, "DemoMail Inc. (staff)", stamp)
        sa = _SimAccount(org, 0, STAFF_OFFICE_NET, None)
        self.staff_org = sa
        numbers = sorted(
            [42, *rng.sample([n for n in range(1, 1000) if n != 42], k=self.options.employees - 1)]
        )
        hired_span = (datetime(2014, 10, 1, tzinfo=UTC) - STAFF_FOUNDED).days
        hires = sorted(
            (STAFF_FOUNDED + timedelta(days=rng.randrange(hired_span), hours=rng.randrange(8)), n)
            for n in numbers
        )
        for hired_at, number in hires:
            username = f"e-{number:03d}"
            office_ip = self.ipv4_in(STAFF_OFFICE_NET)
            su = self.register(
                sa,
                username,
                f"{username}@staff.demomail.example",
                Role.EMPLOYEE,
                self.stamp(
                    Actor(ActorKind.SYSTEM, "hr-sync"), INTERNAL_ADMIN_IP, ADMIN_TOOL, hired_at
                ),
                ActorKind.STAFF,
                office_ip,
                office_ip,
                STAFF_BROWSER,
            )
            self.employees.append(su)
            if username == ATTACKED_EMPLOYEE:
                self.attacked = su
        self.responder = next(e for e in self.employees if e is not self.attacked)
        self.writer.flush()

    # --- phase 2: customers onboarded through 2014 ---------------------------------------

    def onboard_customers(self) -> None:
        rng = self.rng
        for i in range(self.options.accounts):
            day = ONBOARDING_FIRST_DAY + timedelta(days=rng.randrange(ONBOARDING_DAYS))
            at = self.at(day, rng.uniform(8, 18))
            self.spawn(at, self.onboarding(i, at))
        self.run_until(datetime.combine(ACTIVITY_START, datetime.min.time(), UTC))

    def onboarding(self, i: int, t: datetime) -> Process:
        rng = self.rng
        name = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{i:05d}"
        office_v4 = ipaddress.IPv4Network(
            (int(CUSTOMER_NET_V4.network_address) + rng.randrange(8192) * 16, 28)
        )
        office_v6 = ipaddress.IPv6Network(
            (int(CUSTOMER_NET_V6.network_address) + (rng.getrandbits(28) << 80), 48)
        )
        allowlisted = rng.random() < SHARE_ALLOWLIST
        with_v6 = allowlisted and rng.random() < SHARE_ALLOWLIST_V6
        n_teammates = rng.choices((0, 1, 2, 3), weights=(35, 35, 20, 10))[0]
        firsts = rng.sample(FIRST_NAMES, 1 + n_teammates)
        policy_2fa = rng.random() < SHARE_2FA_POLICY

        owner_ip = self.ipv4_in(office_v4)
        owner_ua = rng.choice(BROWSERS)
        owner_actor = Actor(ActorKind.USER, f"{firsts[0]}@{name}")
        display = f"{name.rsplit('-', 1)[0].replace('-', ' ').title()} #{i}"
        account = Account.open(
            name, AccountKind.CUSTOMER, display, self.stamp(owner_actor, owner_ip, owner_ua, t)
        )
        sa = _SimAccount(account, rng.choice((-8, -5, -5, 0, 0, 1, 1, 2)), office_v4, office_v6)
        self.customers.append(sa)
        self.writer.touch(account)

        for k, first in enumerate(firsts):
            at = t + timedelta(minutes=2 + 7 * k)
            yield at
            on_v6 = with_v6 and rng.random() < 0.5
            usual = (
                owner_ip
                if k == 0
                else (self.ipv6_in(office_v6) if on_v6 else self.ipv4_in(office_v4))
            )
            su = self.register(
                sa,
                f"{first}@{name}",
                f"{first}.{rng.choice(LAST_NAMES)}@{name}.example",
                Role.OWNER if k == 0 else Role.TEAMMATE,
                self.stamp(owner_actor, owner_ip, owner_ua, at),
                ActorKind.USER,
                usual,
                self.ipv4_in(CUSTOMER_NET_V4),
                owner_ua if k == 0 else rng.choice(BROWSERS),
            )
            if policy_2fa or rng.random() < SHARE_TOTP:
                yield at + timedelta(minutes=3)
                yield from self.enrol_totp(
                    su, at + timedelta(minutes=3), usual, rng.random() < SHARE_RECOVERY_CODES
                )

        t2 = t + timedelta(minutes=40)
        yield t2
        owner_stamp = self.stamp(owner_actor, owner_ip, owner_ua, t2)
        if policy_2fa:
            account.set_two_factor_policy(True, owner_stamp)
        for key_name in ("production", "staging")[: 1 + (rng.random() < 0.3)]:
            self.create_api_key(sa, key_name, owner_stamp)
        if allowlisted:
            account.add_allowlist_entry(str(office_v4), "office", owner_stamp)
            if with_v6:
                account.add_allowlist_entry(str(office_v6), "office IPv6", owner_stamp)
        self.writer.touch(account)
        self.onboarded += 1
        if self.onboarded % 200 == 0 or self.onboarded == self.options.accounts:
            self.progress("onboarding customers", self.onboarded, self.options.accounts)
        if i in self.custom_dkim:
            sa.dkim_domain = f"{name}.example"
            sa.dkim_selector = f"s{t:%Y%m}"
            self.dkim_generate(sa, sa.dkim_selector, owner_stamp, None)
            yield t2 + timedelta(hours=2)
            account.publish_dkim_key(
                sa.dkim_domain,
                sa.dkim_selector,
                self.stamp(owner_actor, owner_ip, owner_ua, t2 + timedelta(hours=2)),
            )
            self.writer.touch(account)
            yield t2 + timedelta(hours=26)
            account.activate_dkim_key(
                sa.dkim_domain,
                sa.dkim_selector,
                self.stamp(owner_actor, owner_ip, owner_ua, t2 + timedelta(hours=26)),
            )
            self.writer.touch(account)

    def create_api_key(self, sa: _SimAccount, name: str, stamp: Stamp) -> None:
        scopes = ["messages:send", "stats:read"] if name == "production" else ["messages:send"]
        issued = sa.account.create_api_key(name, scopes, self.ledger.api_key_codec, stamp)
        # The token is shown once and dropped here, as a real client would store it.
        index = ApiKeyIndex.index(issued.key_id, sa.account.id, stamp)
        sa.api_keys.append(issued.key_id)
        self.writer.touch(sa.account, index)

    def rotate_api_key(self, sa: _SimAccount, at: datetime, reason: str) -> None:
        if not sa.api_keys:
            return
        owner = sa.users[0]
        stamp = self.stamp(owner.actor, owner.usual_ip, owner.user_agent, at)
        old = sa.api_keys.pop(0)
        self.create_api_key(sa, sa.account.api_keys[old].name, stamp)
        sa.account.revoke_api_key(old, reason, stamp)
        self.writer.touch(sa.account)

    def dkim_generate(
        self, sa: _SimAccount, selector: str, stamp: Stamp, campaign_id: str | None
    ) -> None:
        domain = _present(sa.dkim_domain, "DKIM domain for this account")
        sa.account.generate_dkim_key(
            domain,
            selector,
            self.dkim_algorithm,
            self.keyring,
            stamp,
            campaign_id=campaign_id,
            rsa_bits=self.rsa_bits,
        )
        self.writer.touch(sa.account)

    # --- phase 3: daily life ---------------------------------------------------------------

    def spawn_day(self, day: date) -> None:
        rng = self.rng
        weekday = day.weekday() < 5
        p_login = P_LOGIN_WEEKDAY if weekday else P_LOGIN_WEEKEND
        notice_days = self.response_day < day < self.response_day + timedelta(days=4)
        for sa in self.customers:
            for su in sa.users:
                if rng.random() < p_login:
                    at = self.at(day, rng.uniform(8, 18) - sa.tz_hours)
                    self.spawn(at, self.customer_visit(su, at))
            if rng.random() < P_KEY_ROTATION:
                at = self.at(day, rng.uniform(9, 17) - sa.tz_hours)
                self.spawn(
                    at, _once(functools.partial(self.rotate_api_key, sa, at, "scheduled rotation"))
                )
            if notice_days and rng.random() < P_KEY_ROTATION_AFTER_NOTICE / 3:
                at = self.at(day, rng.uniform(9, 17) - sa.tz_hours)
                reason = f"rotated after DemoMail security notice {INCIDENT_ID}"
                self.spawn(at, _once(functools.partial(self.rotate_api_key, sa, at, reason)))
        if weekday and day != self.response_day:
            for su in self.employees:
                if su.user.disabled or rng.random() < 0.1:  # leave, sick days
                    continue
                at = self.at(day, rng.uniform(8, 10))
                self.spawn(at, self.staff_day(su, at))

    def customer_visit(self, su: _SimUser, at: datetime) -> Process:
        rng = self.rng
        user = su.user
        if user.disabled or user.locked:
            return
        ip = su.away_ip if rng.random() < P_AWAY else su.usual_ip
        if user.reset_required:
            # The forced-reset email sits in the inbox; some follow the link on this visit.
            if rng.random() >= P_RESET_ON_VISIT:
                self.login(su, at, ip, su.user_agent)  # refused: password_reset_required
                return
            self.complete_reset(su, at, ip)
            at += timedelta(seconds=70)
            yield at
        elif rng.random() < P_TYPO:
            self.login(su, at, ip, su.user_agent, password=su.password[:-1])
            at += timedelta(seconds=12)
            yield at
        if not self.login(su, at, ip, su.user_agent):
            return
        # Every control-panel request passes the allowlist check, not just the first.
        account = su.home.account
        for _ in range(rng.choice(PAGE_VIEWS)):
            at += timedelta(seconds=rng.randrange(3, 90))
            yield at
            account.check_control_panel_access(ip, self.stamp(su.actor, ip, su.user_agent, at))
            self.writer.touch(account)

    def complete_reset(self, su: _SimUser, at: datetime, ip: str) -> None:
        new_password = self.password()
        su.user.complete_password_reset(
            new_password, self.hasher, self.stamp(su.actor, ip, su.user_agent, at)
        )
        su.password = new_password
        self.resets_completed += 1
        self.writer.touch(su.user)

    def staff_day(self, su: _SimUser, at: datetime) -> Process:
        rng = self.rng
        if su.user.disabled or not self.login(su, at, su.usual_ip, su.user_agent):
            return
        for k in range(rng.randint(1, 3)):
            when = at + timedelta(minutes=5 + 40 * k)
            yield when
            if su.user.disabled:
                return
            customer = rng.choice(self.customers)
            su.user.record_internal_access(
                "support-console",
                f"accounts/{customer.account.name}/users",
                "read",
                len(customer.users),
                [customer.account.name],
                self.stamp(su.actor, su.usual_ip, su.user_agent, when),
            )
            self.writer.touch(su.user)

    def spawn_bot(self, day: date) -> None:
        """A credential-stuffing bot guesses until a few users lock; support unlocks them."""
        rng = self.rng
        victims = rng.sample(
            [su for sa in self.customers for su in sa.users],
            k=min(max(1, self.options.accounts // 50), 20),
        )
        bot_ip = self.ipv4_in(BOT_NET)
        for su in victims:
            at = self.at(day, rng.uniform(0, 5))
            self.spawn(at, self.stuffing(su, at, bot_ip))

    def stuffing(self, su: _SimUser, at: datetime, bot_ip: str) -> Process:
        claimed = Actor(ActorKind.USER, su.user.username)
        # The bot's list holds usernames nobody has: each try is recorded all the same.
        for guess in LEAKED_USERNAMES[: self.rng.randint(1, len(LEAKED_USERNAMES))]:
            stamp = self.stamp(Actor(ActorKind.USER, guess), bot_ip, BOT_AGENT, at)
            self.writer.touch(CredentialAttempt.unknown_user(guess, "login", stamp))
            at += timedelta(seconds=3)
            yield at
        for _ in range(self.ledger.lockout_threshold):
            if su.user.locked:
                break
            self.login(su, at, bot_ip, BOT_AGENT, password=self.password(), actor=claimed)
            at += timedelta(seconds=7)
            yield at
        if not su.user.locked:
            return
        # Support unlocks the user the next morning, from the office.
        at = self.at(at.date() + timedelta(days=1), 9.5 + self.rng.random())
        yield at
        staff = self.rng.choice([e for e in self.employees if not e.user.disabled])
        if su.user.locked:
            su.user.unlock(self.stamp(staff.actor, staff.usual_ip, ADMIN_TOOL, at))
            self.writer.touch(su.user)

    # --- phase 4: the attacker -----------------------------------------------------------

    def attack(self, night: int, day: date) -> Process:
        rng = self.rng
        su = _present(self.attacked, "attacked employee")
        at = self.at(day, 1 + rng.uniform(0, 2))
        yield at
        ip = self.ipv4_in(ATTACKER_NET_V4) if night < 2 else self.ipv6_in(ATTACKER_NET_V6)
        session = AttackerSession(day, [ip], [ATTACKER_BROWSER], 0, 0, 0, 0, 0, [])
        self.sessions[day] = session
        if night == 0:  # a fumbled first try with the phished password
            self.login(su, at, ip, ATTACKER_BROWSER, password=su.password + "1")
            session.logins_failed += 1
            at += timedelta(seconds=40)
            yield at
        if not self.login(su, at, ip, ATTACKER_BROWSER):
            session.logins_failed += 1
            return
        session.logins_succeeded += 1

        by_name = {sa.account.name: sa for sa in self.customers}
        names = sorted(by_name)
        share = (0.1, 0.35, 0.35)[night]
        touched = sorted(rng.sample(names, k=max(1, round(len(names) * share))))
        steps: list[tuple[str, str, str, list[str], str]] = []
        if night == 0:  # reconnaissance through the support console
            steps += [
                ("support-console", f"accounts/{n}/users", "read", [n], ATTACKER_BROWSER)
                for n in touched[:5]
            ]
        for k in range(0, len(touched), MAX_ACCOUNTS_PER_ACCESS):
            chunk = touched[k : k + MAX_ACCOUNTS_PER_ACCESS]
            steps.append(("customer-db", "accounts/export", "export", chunk, ATTACKER_TOOL))
        if night == 1:  # the signing keys: why every custom DKIM key gets rotated
            dkim = sorted(sa.account.name for sa in self.customers if sa.dkim_domain)
            for k in range(0, len(dkim), MAX_ACCOUNTS_PER_ACCESS):
                chunk = dkim[k : k + MAX_ACCOUNTS_PER_ACCESS]
                steps.append(("mail-signing", "dkim-keys/export", "export", chunk, ATTACKER_TOOL))
        session_accounts: set[str] = set()
        for system, resource, action, accounts, agent in steps:
            at += timedelta(minutes=2, seconds=rng.randrange(60))
            yield at
            if resource == "dkim-keys/export":
                records = len(accounts)
            else:
                records = sum(len(by_name[n].users) for n in accounts)
            su.user.record_internal_access(
                system, resource, action, records, accounts, self.stamp(su.actor, ip, agent, at)
            )
            self.writer.touch(su.user)
            session.accesses += 1
            session.records_read += records
            if agent not in session.user_agents:
                session.user_agents.append(agent)
            if system not in session.systems:
                session.systems.append(system)
            session_accounts.update(accounts)
        self.attacker_accounts |= session_accounts
        session.customer_accounts_touched = len(session_accounts)

    def attempt_after_disable(self, day: date) -> Process:
        at = self.at(day, 2 + self.rng.uniform(0, 1))
        yield at
        su = _present(self.attacked, "attacked employee")
        if not self.login(su, at, self.ipv4_in(ATTACKER_NET_V4), ATTACKER_BROWSER):
            self.refused_after_disable += 1

    # --- phase 5: the response -------------------------------------------------------------

    def spawn_response(self, day: date) -> None:
        rng = self.rng
        self.spawn(self.at(day, 9.2), _once(functools.partial(self.disable_employee, day)))
        self.spawn(self.at(day, 9.5), _once(functools.partial(self.require_staff_2fa, day)))
        self.spawn(self.at(day, 10.0), _once(functools.partial(self.force_resets, day)))
        for sa in self.customers:
            if sa.dkim_domain:
                at = self.at(day, 11 + rng.uniform(0, 3))
                self.spawn(at, self.rotate_dkim(sa, at))
        for su in self.employees:
            if su is not self.attacked:
                at = self.at(day, 13 + rng.uniform(0, 3))
                self.spawn(at, self.staff_recovers(su, at))

    def lead_ctx(self) -> RequestContext:
        lead = _present(self.responder, "incident responder")
        return self.ctx(lead.actor, lead.usual_ip, ADMIN_TOOL)

    def disable_employee(self, day: date) -> None:
        self.clock.set(self.at(day, 9.2))
        reason = (
            f"{INCIDENT_ID}: credentials used from {ATTACKER_NET_V4} and {ATTACKER_NET_V6} "
            "to export customer records"
        )
        self.through_ledger(
            lambda: self.ledger.disable_user(
                cmd.parse_command(cmd.DisableUser, username=ATTACKED_EMPLOYEE, reason=reason),
                self.lead_ctx(),
            )
        )

    def require_staff_2fa(self, day: date) -> None:
        self.clock.set(self.at(day, 9.5))
        self.through_ledger(
            lambda: self.ledger.set_two_factor_policy(
                cmd.parse_command(cmd.SetTwoFactorPolicy, account=STAFF_ORG, required=True),
                self.lead_ctx(),
            )
        )

    def force_resets(self, day: date) -> None:
        self.clock.set(self.at(day, 10.0))
        command = cmd.parse_command(
            cmd.RequirePasswordResets,
            reason=f"{INCIDENT_ID}: precautionary reset after a staff account compromise",
            campaign_id=PASSWORD_CAMPAIGN,
            everyone=True,
        )

        def bulk() -> None:
            result = self.ledger.require_password_resets(
                command,
                self.lead_ctx(),
                progress=lambda done, total: self.progress("forced password resets", done, total),
            )
            self.marked_for_reset = result.marked

        self.through_ledger(bulk)
        self.period_end = max(self.period_end, self.at(day, 10.0))

    def through_ledger(self, command: Callable[[], Any]) -> None:
        """Run a ledger command, then catch the in-memory aggregates up with what it stored.

        Applying just the new events keeps them exactly in step with the store, at the
        cost of the new events only (reloading every user would cost the whole log).
        """
        self.writer.flush()
        before = self.ledger.log_store.head()
        command()
        live: dict[uuid.UUID, Aggregate] = {}
        for sa in [*self.customers, *([self.staff_org] if self.staff_org else [])]:
            live[sa.account.id] = sa.account
            for su in sa.users:
                live[su.user.id] = su.user
        source = LogSource.of(self.ledger)
        after = before
        while True:
            rows = source.rows(after, 10_000)
            if not rows:
                return
            for row in rows:
                self.counts[event_type_name(row.topic)] += 1
                event: Any = source.decode(row)
                aggregate = live.get(event.originator_id)
                if aggregate is not None:
                    event.mutate(aggregate)  # checks the version follows on
            after = rows[-1].position

    def rotate_dkim(self, sa: _SimAccount, at: datetime) -> Process:
        domain = _present(sa.dkim_domain, "DKIM domain for this account")
        rotator = Actor(ActorKind.SYSTEM, "dkim-rotator")
        selector = f"r{at:%Y%m%d}"
        self.dkim_generate(
            sa, selector, self.stamp(rotator, INTERNAL_JOB_IP, ROTATOR_AGENT, at), DKIM_CAMPAIGN
        )
        at += timedelta(minutes=5)
        yield at
        sa.account.publish_dkim_key(
            domain, selector, self.stamp(rotator, INTERNAL_JOB_IP, ROTATOR_AGENT, at)
        )
        self.writer.touch(sa.account)
        # Activation waits a day for DNS to propagate; it retires the old key with it.
        at += timedelta(days=1)
        yield at
        retired = sa.account.activate_dkim_key(
            domain, selector, self.stamp(rotator, INTERNAL_JOB_IP, ROTATOR_AGENT, at)
        )
        self.dkim_rotated += 1
        self.dkim_retired += len(retired)
        sa.dkim_selector = selector
        self.writer.touch(sa.account)

    def staff_recovers(self, su: _SimUser, at: datetime) -> Process:
        """Each employee resets the password and enrols TOTP, as the staff policy now demands."""
        if not su.user.reset_required:
            return
        self.complete_reset(su, at, su.usual_ip)
        at += timedelta(minutes=2)
        yield at
        yield from self.enrol_totp(su, at, su.usual_ip, recovery=True)
        at += timedelta(minutes=4)
        yield at
        self.login(su, at, su.usual_ip, su.user_agent)

    # --- the whole story -----------------------------------------------------------------

    def run(self) -> None:
        self.found_staff()
        self.onboard_customers()
        rng = self.rng
        candidates = [
            d
            for d in self.activity_days
            if d < self.response_day and d not in self.attack_days and d.weekday() < 5
        ]
        bot_days = sorted(rng.sample(candidates, k=2))
        total = len(self.activity_days)
        for done, day in enumerate(self.activity_days, 1):
            self.spawn_day(day)
            if day in bot_days:
                self.spawn_bot(day)
            if day in self.attack_days:
                self.spawn(self.at(day, 0), self.attack(self.attack_days.index(day), day))
            if day == self.response_day:
                self.spawn_response(day)
            if day == self.response_day + timedelta(days=2):
                self.spawn(self.at(day, 0), self.attempt_after_disable(day))
            # Late visits (customers west of UTC) run on into the next UTC day.
            self.run_until(self.at(day + timedelta(days=1), 0))
            self.progress("daily activity 2015", done, total)
        self.run_until(None)
        self.writer.flush()


# --- entry point --------------------------------------------------------------------------


def check_store_is_empty(ledger: Ledger, store: str) -> None:
    events = ledger.log_store.head()
    if not events:
        return
    if ledger.account_exists(STAFF_ORG):
        raise DemoRefusedError(
            f"the demo was already replayed into {store} (account {STAFF_ORG!r} exists); "
            "point SECSTATE_HOME at a new directory (or use a new schema= in "
            "SECSTATE_DATABASE_URL) to run it again"
        )
    raise DemoRefusedError(
        f"{store} is not empty (it holds events up to position {events}); the demo ends "
        "with a password reset of every user in the store, so it only runs into an empty "
        "store: point SECSTATE_HOME at a new directory (or use a new schema= in "
        "SECSTATE_DATABASE_URL)"
    )


def run_demo(
    settings: Settings, options: DemoOptions, progress: ProgressFn | None = None
) -> DemoSummary:
    """Replay the incident into the store ``settings`` name; refuses a non-empty store."""
    started, cpu_started = time.perf_counter(), time.process_time()
    clock = SteppedClock(STAFF_FOUNDED)
    ledger = build_ledger(settings, clock=clock)
    try:
        store = settings.describe_store()
        check_store_is_empty(ledger, store)
        ledger.keyring.require()  # the demo seals secrets: no key ring, no half-written demo
        sim = _Simulation(ledger, clock, options, settings.dkim_rsa_bits, progress)
        sim.run()
        elapsed = time.perf_counter() - started
        total = sum(sim.counts.values())
        all_users = [su for sa in [*sim.customers, sim.staff_org] if sa for su in sa.users]
        touched = sorted(sim.attacker_accounts)
        return DemoSummary(
            store=store,
            seed=options.seed,
            accounts=options.accounts,
            employees=options.employees,
            users=len(all_users),
            period_start=STAFF_FOUNDED,
            period_end=sim.period_end,
            events_total=total,
            events_by_type=dict(sorted(sim.counts.items())),
            elapsed_seconds=round(elapsed, 3),
            cpu_seconds=round(time.process_time() - cpu_started, 3),
            events_per_second=round(total / elapsed, 1) if elapsed > 0 else 0.0,
            password_hasher=DEMO_ARGON2_TEXT,
            password_campaign=PASSWORD_CAMPAIGN,
            users_marked_for_reset=sim.marked_for_reset,
            resets_completed=sim.resets_completed,
            users_still_needing_reset=sum(1 for su in all_users if su.user.reset_required),
            attacker_employee=ATTACKED_EMPLOYEE,
            attacker_sessions=[sim.sessions[d] for d in sorted(sim.sessions)],
            attacker_customer_accounts_touched=len(touched),
            attacker_customer_accounts_sample=touched[:10],
            attacker_refused_after_disable=sim.refused_after_disable,
            dkim_campaign=DKIM_CAMPAIGN,
            dkim_algorithm=sim.dkim_algorithm,
            dkim_keys_rotated=sim.dkim_rotated,
            dkim_keys_retired=sim.dkim_retired,
        )
    finally:
        ledger.close()
