#!/usr/bin/env bash
# The clean-up's cost with and without session events, side by side (issue 11's budget: the
# clean-up that records SESSION_EXPIRED stays within 2x the time of the one before events).
#
#   bench/cleanup_cost.sh BASE_BIN NEW_BIN [SESSIONS] [ROUNDS]
#
# BASE_BIN is a session-server built from 72875c7 (the last commit before events), NEW_BIN the
# one to measure. For each round and each binary: a fresh PostgreSQL database (BENCH_POSTGRES_URL,
# default postgres://root@127.0.0.1:5432/test), SESSIONS (default 1000000) already-expired
# anonymous sessions inserted in SQL, the server started on it, and `cleanUpExpiredSessions`
# timed as the superadmin. Prints one line per run and the ratio of the medians.
set -euo pipefail
base_bin=$1 new_bin=$2 n=${3:-1000000} rounds=${4:-2}
pg=${BENCH_POSTGRES_URL:-postgres://root@127.0.0.1:5432/test}
server_url=${pg%/*}
port=${PORT:-3998}
declare -A times
run() { # label bin db
  local label=$1 bin=$2 db=$3
  psql -q "$pg" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  local url="$server_url/$db"
  DATABASE_URL=$url RUST_LOG=warn "$bin" migrate >/dev/null
  local now; now=$(date +%s%3N)
  psql -q "$url" -c "INSERT INTO session (kind, token_hash, token_issued_at, invalidated, \
    remember_me, created_at, last_active_at, absolute_expires_at) SELECT 'anonymous', \
    md5(g::text) || md5((g + 1)::text), $now - 2678400000, false, false, $now - 2678400000, \
    $now - 2678400000, $now - 86400000 FROM generate_series(1, $n) g"
  BIND=127.0.0.1:$port DATABASE_URL=$url SESSION_CACHE=memory SUPERADMIN_PASSWORD=bench-cleanup-pw \
    COOKIE_SECURE=false RUST_LOG=warn CLEANUP_INTERVAL=24h REQUEST_TIMEOUT=30m \
    "$bin" serve >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.5; done
  local token
  token=$(curl -s -D - -o /dev/null -H 'content-type: application/json' "localhost:$port/graphql" \
    -d '{"query":"mutation { login(username: \"superadmin\", password: \"bench-cleanup-pw\") { __typename } }"}' \
    | tr -d '\r' | awk 'tolower($1) == "session-token:" { print $2 }')
  local start end out
  start=$(date +%s.%N)
  out=$(curl -s -m 1800 -H 'content-type: application/json' -H "authorization: Bearer $token" \
    "localhost:$port/graphql" -d '{"query":"mutation { cleanUpExpiredSessions }"}')
  end=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local events
  events=$(psql -tA "$url" -c "SELECT count(*) FROM session_event WHERE kind = 'SESSION_EXPIRED'" 2>/dev/null || echo "-")
  psql -q "$pg" -c "DROP DATABASE IF EXISTS $db" >/dev/null
  [[ $out == *"\"cleanUpExpiredSessions\":$n"* ]] || { echo "$label: unexpected answer: $out" >&2; exit 1; }
  local took; took=$(echo "$end - $start" | bc)
  echo "$label: $n sessions deleted in $took s (SESSION_EXPIRED rows: $events)"
  times[$label]="${times[$label]:-} $took"
}
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for r in $(seq 1 "$rounds"); do
  run base "$base_bin" "cleanup_cost_base_$r"
  run new "$new_bin" "cleanup_cost_new_$r"
done
b=$(echo "${times[base]}" | median); e=$(echo "${times[new]}" | median)
echo "median: before events $b s, with events $e s, ratio $(echo "scale=2; $e / $b" | bc) (budget 2.00)"
