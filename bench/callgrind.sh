#!/usr/bin/env bash
# Instructions per request of the server's own code (user space), counted by callgrind: the
# floor `{ __typename }`, the session with its user, and `me`, each for N requests on one
# keep-alive connection after a warm-up, on one server (memory cache, SQLite, one worker
# thread). Counts are repeatable for the same binary whatever else the machine is doing, so
# two builds can be compared exactly (wall-clock rows cannot see a 1 % change).
#
#   bench/callgrind.sh [path/to/session-server] [N]      (default: target/release, 3000)
#
# Needs valgrind (callgrind_control) and python3. Under valgrind SHA-256 runs its portable
# code (valgrind hides SHA-NI), about 3,450 instructions of each authenticated request that a
# native run on a CPU with SHA-NI spends in about 60 ns.
set -euo pipefail
BIN=${1:-target/release/session-server}
N=${2:-3000}
BIN=$(realpath "$BIN")
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export TOKIO_WORKER_THREADS=1 RUST_LOG=warn BIND=127.0.0.1:$PORT \
  DATABASE_URL="sqlite://$DIR/s.db?mode=rwc" SESSION_CACHE=memory
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.%p" --instr-atstart=no \
  "$BIN" serve >"$DIR/server.log" 2>&1 &
VPID=$!
trap 'kill $VPID 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health')" 2>/dev/null && break
  sleep 1
done
python3 - "$PORT" "$N" "$VPID" "$DIR" <<'PY'
import http.client, json, subprocess, sys, glob
port, n, vpid, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = http.client.HTTPConnection('127.0.0.1', port)
def post(body, token=None):
    h = {'content-type': 'application/json'}
    if token:
        h['authorization'] = 'Bearer ' + token
    c.request('POST', '/graphql', json.dumps({'query': body}), h)
    r = c.getresponse()
    return r, json.loads(r.read())
r, _ = post('mutation { login(username: "superadmin", password: "superadmin") { __typename } }')
token = r.getheader('session-token')
_, me = post('{ me { id identifier channels { channelCode permissions } } activeSession { id kind } }', token)
sid = me['data']['activeSession']['id']
kinds = [
    ('floor', '{ __typename }', None, {'data': {'__typename': 'Query'}}),
    ('session with user', '{ activeSession { id kind user { id identifier } } }', token,
     {'data': {'activeSession': {'id': sid, 'kind': 'AUTHENTICATED',
                                 'user': {'id': me['data']['me']['id'], 'identifier': 'superadmin'}}}}),
    ('me', '{ me { identifier channels { channelCode permissions } } }', token,
     {'data': {'me': {'identifier': 'superadmin', 'channels': me['data']['me']['channels']}}}),
]
ctl = lambda *a: subprocess.run(['callgrind_control', *a, vpid], check=True, capture_output=True)
rows = []
for name, q, tok, want in kinds:
    for _ in range(200):
        post(q, tok)
    ctl('-z'); ctl('-i', 'on')
    for _ in range(n):
        r, got = post(q, tok)
        if r.status != 200 or got != want:
            sys.exit(f'{name}: wrong answer {got}')
    ctl('-i', 'off'); ctl('-d', name.replace(' ', '-'))
    dump = sorted(glob.glob(f'{d}/cg.{vpid}.*'))[-1]
    total = next(int(l.split()[1]) for l in open(dump) if l.startswith('totals:'))
    rows.append((name, total / n))
floor = rows[0][1]
print(f'{"request":<20} {"instructions/request":>21} {"÷ floor":>8}')
for name, per in rows:
    print(f'{name:<20} {per:>21,.0f} {per / floor:>8.3f}')
PY
