# Sourced by .ci/run: a throwaway PostgreSQL cluster on a Unix socket for the shared-study test.
# Exports BONEFRAC_TEST_POSTGRES_URL and BONEFRAC_REQUIRE_POSTGRES=1 (the test then fails
# instead of skipping) and stops the cluster when the calling shell exits.
# Needs Debian's postgresql package (installed by .ci/run); as root the server runs as the
# 'postgres' user, otherwise as the current user.

pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "warning: PostgreSQL not installed; the shared-study test will be skipped"
  return 0
fi
as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(runuser -u postgres --)
fi
pg_tmp="$(mktemp -d /tmp/bonefrac-pg.XXXXXX)"
mkdir -p "$pg_tmp/sock"
[ "$(id -u)" = 0 ] && chown -R postgres "$pg_tmp"
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_tmp/data" -U postgres --auth=trust >"$pg_tmp/initdb.log"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/server.log" -w \
  -o "-k $pg_tmp/sock -c listen_addresses=''" start >/dev/null
stop_postgres() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_tmp/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$pg_tmp"
}
trap stop_postgres EXIT
"${as_pg[@]}" "$pg_bin/createdb" -h "$pg_tmp/sock" -U postgres bonefrac_test
export BONEFRAC_TEST_POSTGRES_URL="postgresql://postgres@/bonefrac_test?host=$pg_tmp/sock"
export BONEFRAC_REQUIRE_POSTGRES=1
echo "PostgreSQL for the tests: $BONEFRAC_TEST_POSTGRES_URL"
