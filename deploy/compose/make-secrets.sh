#!/bin/sh
# Makes the compose stack's secrets under deploy/compose/secrets/ (mode 600), once: existing files are kept.
#   influxdb-admin-password  InfluxDB's initial user (aifmon) password
#   influxdb-token           InfluxDB's operator token; the aifmon sink services read it (AIFMON_INFLUXDB_TOKEN_FILE)
#   dashboard-password       the dashboard's basic-auth password for user `aifmon` (read it to log in)
#   dashboard-htpasswd       its SHA-512 crypt hash, which the authenticating proxy in front of the dashboard reads
# Needs openssl. Compose mounts each as /run/secrets/<name> in the services that list it.
set -eu
dir=$(dirname "$0")/secrets
mkdir -p "$dir"
umask 077
make() {  # make NAME: 32 random bytes, base64url without padding, unless NAME exists
  [ -s "$dir/$1" ] || openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' > "$dir/$1"
}
make influxdb-admin-password
make influxdb-token
make dashboard-password
if [ ! -s "$dir/dashboard-htpasswd" ]; then
  printf 'aifmon:%s\n' "$(openssl passwd -6 -stdin < "$dir/dashboard-password")" > "$dir/dashboard-htpasswd"
fi
# The containers read the secrets as other users (nginx, influxdb, aifmon): compose bind-mounts these files,
# so they must be readable by those users; the folder itself stays private to the owner.
chmod 700 "$dir"
chmod 644 "$dir"/influxdb-admin-password "$dir"/influxdb-token "$dir"/dashboard-htpasswd
echo "secrets in $dir; dashboard login: aifmon / $(cat "$dir/dashboard-password")" >&2
