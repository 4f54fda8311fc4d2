#!/usr/bin/env bash
# Static checks of the deployment files, run by deploy/local/test.sh (and so
# by CI). No image is pulled or run and no cluster is contacted: this checks
# that the files are what Docker Compose and Kubernetes accept.
#
#   1. Debian's docker-compose accepts deploy/compose/docker-compose.yml
#      (`docker-compose config`).
#   2. The Prometheus rules and configs and the Grafana provisioning files
#      are well-formed YAML of the expected shape (every rule an alert with
#      an expr, a severity label of page or ticket, a summary, a valid `for`).
#   3. `kubectl kustomize` renders every overlay of deploy/k8s/overlays, and
#      kubernetes-validate (PyPI, in a venv under $XOFLOW_CACHE) validates the
#      output against the Kubernetes schemas, strictly (unknown fields are
#      errors). CRDs it has no schema for (ServiceMonitor) are listed.
#
# The Dockerfile is not built here (no Docker engine); the dashboards and
# alerting rules are checked by tests/ops_dashboards.rs and
# tests/ops_metrics.rs against live ClickHouse and /metrics.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${XOFLOW_CACHE:-$HOME/.cache/xoflow}
out=$repo/target/deploy-check
mkdir -p "$out" "$cache"
say() { printf '[deploy-check] %s\n' "$*"; }
die() { printf '[deploy-check] error: %s\n' "$*" >&2; exit 1; }

# Debian's packages: docker-compose (v1, Python), kubectl if the machine
# has none (the machine image ships one; Debian 12's own is too old for
# kustomize's labels/replicas fields, so the `kubectl` package is asked for).
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v kubectl >/dev/null || missing+=(kubectl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null || die "cannot install ${missing[*]}"
fi

say "docker-compose $(docker-compose version --short): deploy/compose/docker-compose.yml"
docker-compose -f "$repo/deploy/compose/docker-compose.yml" config >"$out/compose.yml"
services=$(docker-compose -f "$repo/deploy/compose/docker-compose.yml" config --services | tr '\n' ' ')
say "  accepted; services: $services"

venv=$cache/venv-deploy
validate_version=1.37.0
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$validate_version"; then
  say "installing kubernetes-validate $validate_version into $venv (pip)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$validate_version"
fi

# PyYAML comes with kubernetes-validate.
"$venv/bin/python" - "$repo" <<'PY'
import glob, re, sys, yaml
repo = sys.argv[1]
rules = 0
for path in sorted(glob.glob(f"{repo}/deploy/prometheus/*.yml")):
    doc = yaml.safe_load(open(path))
    for group in doc["groups"]:
        assert group["name"] and group["rules"], path
        for r in group["rules"]:
            where = f"{path}: {r.get('alert')}"
            assert re.fullmatch(r"[A-Z][A-Za-z]+", r["alert"]), where
            assert isinstance(r["expr"], str) and r["expr"].strip(), where
            assert r["labels"]["severity"] in ("page", "ticket"), where
            assert r["annotations"]["summary"], where
            assert re.fullmatch(r"\d+[smhd]", r.get("for", "0s")), where
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, where
            rules += 1
for path in [f"{repo}/deploy/compose/prometheus.yml"] + sorted(glob.glob(f"{repo}/deploy/grafana/provisioning/*/*.yml")):
    doc = yaml.safe_load(open(path))
    assert isinstance(doc, dict) and doc, path
print(f"[deploy-check] prometheus rules: {rules} alerts well-formed; prometheus.yml and grafana provisioning parse")
PY

for overlay in "$repo"/deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  rendered=$out/k8s-$name.yaml
  kubectl kustomize "$overlay" >"$rendered"
  kinds=$(grep -c '^kind:' "$rendered")
  report=$("$venv/bin/kubernetes-validate" --strict "$rendered" 2>&1) || {
    printf '%s\n' "$report" >&2
    die "overlay $name does not validate"
  }
  passed=$(grep -c ' passed for resource ' <<<"$report" || true)
  unknown=$(grep "Couldn't find schema" <<<"$report" | sed -E 's/.*kind ([A-Za-z]+) with api version ([^ ]+).*/\1 (\2)/' | sort -u | tr '\n' ' ')
  if grep -v -e ' passed for resource ' -e "Couldn't find schema for kind ServiceMonitor" <<<"$report" | grep -q .; then
    printf '%s\n' "$report" >&2
    die "overlay $name: unexpected validation output"
  fi
  say "kustomize overlays/$name: $kinds resources; $passed valid against Kubernetes $(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$validate_version") (strict); no schema here for: ${unknown:-none}"
done
