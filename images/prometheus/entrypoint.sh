#!/bin/sh
# Prometheus container entrypoint: render the scrape configuration into a
# private temporary directory (the root is read-only), exec Prometheus.
#   FACILITY_SITE_TARGETS     host:port of each stand-in site's metrics, comma
#                             separated (docker-compose.override.yml; empty: none)
#   FACILITY_RETENTION        how long samples are kept (30d)
#   FACILITY_MONITORING_SECRETS  the monitoring volume (the metrics token)
# Prometheus' UI and API are served under /services/monitoring/prometheus/ by
# the hub's monitoring service, which strips that prefix (--web.route-prefix=/).
set -eu
fail() { echo "prometheus: $*" >&2; exit 1; }
sites="${FACILITY_SITE_TARGETS:-}"
case "$sites" in *[!A-Za-z0-9.:,-]*) fail "FACILITY_SITE_TARGETS: not host:port[,host:port...]: '$sites'";; esac
retention="${FACILITY_RETENTION:-30d}"
case "$retention" in ''|*[!0-9smhdwy]*) fail "PROMETHEUS_RETENTION '$retention' is not a duration like 30d";; esac
list=""
for t in $(printf '%s' "$sites" | tr ',' ' '); do list="$list${list:+, }\"$t\""; done
conf="${FACILITY_CONFIG_DIR:-/etc/gridhub/prometheus}"   # (another: the unit tests)
out="${TMPDIR:-/tmp}/prometheus"
umask 077
mkdir -p "$out"
sed -e "s|@SITE_TARGETS@|[$list]|" \
    -e "s|@MONITORING@|${FACILITY_MONITORING_SECRETS:-/srv/gridhub/monitoring}|g" \
    -e "s|@CONFIG_DIR@|$conf|g" \
    "$conf/prometheus.yml.tmpl" > "$out/prometheus.yml"
exec prometheus \
  --config.file="$out/prometheus.yml" \
  --storage.tsdb.path=/prometheus \
  --storage.tsdb.retention.time="$retention" \
  --web.listen-address=:9090 \
  --web.external-url=/services/monitoring/prometheus/ \
  --web.route-prefix=/ \
  "$@"
