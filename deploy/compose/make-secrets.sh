#!/bin/sh
# Makes the compose stack's secrets under deploy/compose/secrets/, once: existing files are kept.
#   influxdb-admin-password      InfluxDB's initial user (aifmon) password
#   influxdb-token               InfluxDB's operator token; the aifmon sink services read it (AIFMON_INFLUXDB_TOKEN_FILE)
#   postgres-password            PostgreSQL's user aifmon (the ledger's rows); the services read it (AIFMON_POSTGRES_PASSWORD_FILE)
#   dashboard-operator-password  the password of the dashboard's user `operator` (role operator: every page)
#   dashboard-board-password     the password of the dashboard's user `board` (role board: overview, projects,
#                                efficiency, reports)
#   dashboard-users.yaml         the dashboard's users file (roles and bcrypt hashes of cost 12), which
#                                `aifmon dashboard --users /run/secrets/dashboard_users` reads, and re-reads when
#                                it changes: add, demote or remove users there (docs/deployment.md)
# Needs openssl, and for the bcrypt hashes htpasswd (Debian: apache2-utils) or a Python with the bcrypt package
# (PYTHON=.venv/bin/python after `pip install -e '.[site]'`). Passwords reach those tools on stdin, never in argv.
# Compose mounts each secret a service lists as /run/secrets/<name>.
set -eu
dir=$(dirname "$0")/secrets
if [ ! -s "$dir/dashboard-users.yaml" ] && ! command -v htpasswd >/dev/null 2>&1 && ! "${PYTHON:-python3}" -c 'import bcrypt' 2>/dev/null; then
  echo "make-secrets.sh: the dashboard's users file needs bcrypt hashes: install htpasswd (Debian: apache2-utils)," \
       "or give a Python with the bcrypt package: PYTHON=.venv/bin/python $0" >&2
  exit 1
fi
mkdir -p "$dir"
umask 077
make() {  # make NAME: 32 random bytes, base64url without padding, unless NAME exists
  [ -s "$dir/$1" ] || openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' > "$dir/$1"
}
bcrypt_hash() {  # bcrypt_hash FILE: the bcrypt hash (cost 12) of the password in FILE
  if command -v htpasswd >/dev/null 2>&1; then
    htpasswd -niBC 12 user < "$1" | head -n 1 | cut -d: -f2-
  else
    "${PYTHON:-python3}" -c 'import sys, bcrypt; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(12)).decode())' < "$1"
  fi
}
make influxdb-admin-password
make influxdb-token
make postgres-password
make dashboard-operator-password
make dashboard-board-password
if [ ! -s "$dir/dashboard-users.yaml" ]; then
  operator=$(bcrypt_hash "$dir/dashboard-operator-password")
  board=$(bcrypt_hash "$dir/dashboard-board-password")
  printf 'users:\n  operator: {role: operator, password_hash: "%s"}\n  board: {role: board, password_hash: "%s"}\n' \
    "$operator" "$board" > "$dir/dashboard-users.yaml.new"
  mv "$dir/dashboard-users.yaml.new" "$dir/dashboard-users.yaml"
fi
# The containers read the secrets as other users (influxdb, aifmon): compose bind-mounts these files,
# so they must be readable by those users; the folder itself stays private to the owner, and the
# dashboard's passwords (for people, not services) stay private to the owner too.
chmod 700 "$dir"
chmod 644 "$dir"/influxdb-admin-password "$dir"/influxdb-token "$dir"/postgres-password "$dir"/dashboard-users.yaml
echo "secrets in $dir; dashboard users: operator and board, passwords in $dir/dashboard-operator-password" \
     "and $dir/dashboard-board-password" >&2
