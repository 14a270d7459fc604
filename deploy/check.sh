#!/usr/bin/env bash
# Checks deploy/: renders the kustomizations and validates what they render,
# offline. Run from anywhere: `bash deploy/check.sh`. .ci/run calls it.
#
#  1. Installs the pinned kustomize from the Go module proxy into a temporary
#     GOBIN (the module and build caches make reruns take seconds).
#  2. Renders deploy/base and deploy/overlays/example; any kustomize error
#     fails the check.
#  3. Validates the rendered objects, the one-off Job example and the Grafana
#     dashboard with deploy/validate: each object decoded strictly into the
#     Kubernetes API's Go types (unknown, misspelt or duplicate fields and
#     wrong types fail, as with the API server's strict field validation),
#     then checked against each other (selectors, ports, Secret keys, the
#     grace period, security settings) and every query's metric names.
#     Not kubeconform: its schemas are downloaded from GitHub, which is not
#     reachable from CI, and this repository keeps no copy of them.
#  4. Checks that the Go code still declares every metric those queries use,
#     and that the validator still rejects a broken manifest.
#  5. Parses every alert and dashboard query with promtool, and runs the
#     alerts' unit tests (deploy/test/alerts.test.yaml). promtool comes from
#     Debian's prometheus package, downloaded and unpacked here, not
#     installed (installing would set up a Prometheus server).
set -euo pipefail

# Pinned tools. kustomize v5.8.2 is the newest that builds with Go 1.26
# (v5.8.3 needs Go 1.27).
readonly KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5
readonly KUSTOMIZE_VERSION=v5.8.2

deploy="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
cd "$deploy"

if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bin="$work/bin"
mkdir -p "$bin"

step() { printf -- '--- %s\n' "$*"; }

step "install kustomize $KUSTOMIZE_VERSION"
GOBIN="$bin" go install "$KUSTOMIZE_MODULE@$KUSTOMIZE_VERSION"
"$bin/kustomize" version

step "build deploy/validate"
(cd validate && go build -o "$bin/validate" . && go vet .)

step "render"
"$bin/kustomize" build base >"$work/base.yaml"
"$bin/kustomize" build overlays/example >"$work/example.yaml"
echo "base: $(grep -c '^kind:' "$work/base.yaml") objects; overlays/example: $(grep -c '^kind:' "$work/example.yaml") objects"

step "validate base (its Secret comes from an overlay)"
"$bin/validate" -allow-missing-secrets "$work/base.yaml"
step "validate overlays/example, examples/dlq-replay-job.yaml and grafana/cio-relay.json"
"$bin/validate" -write-rules "$work/rules" \
	"$work/example.yaml" examples/dlq-replay-job.yaml grafana/cio-relay.json

step "the metrics the dashboard and alerts use are declared in the Go code"
# deploy/validate/metrics.go lists them; a metric renamed or removed in the
# code must fail here, not silently empty a panel or an alert.
missing=0
for metric in $(grep -oE '"cio_relay_[a-z0-9_]+"' validate/metrics.go | tr -d '"'); do
	if ! grep -rqF --include='*.go' --exclude='*_test.go' --exclude-dir=deploy "\"$metric\"" ..; then
		echo "no Go file (outside tests and deploy/) declares $metric" >&2
		missing=1
	fi
done
if ((missing)); then
	exit 1
fi
echo "all $(grep -cE '^\s+"cio_relay_' validate/metrics.go) metrics found"

step "the validator rejects a broken manifest"
# A misspelt field: an API server with strict field validation rejects it,
# and so must the validator.
sed 's/readinessProbe:/readinessprobe:/' "$work/example.yaml" >"$work/broken.yaml"
if cmp -s "$work/example.yaml" "$work/broken.yaml"; then
	echo "the self-test found no readinessProbe to break" >&2
	exit 1
fi
if "$bin/validate" "$work/broken.yaml" >"$work/broken.out" 2>&1; then
	echo "the validator accepted a manifest with a misspelt field:" >&2
	cat "$work/broken.out" >&2
	exit 1
fi
echo "rejected as expected: $(head -1 "$work/broken.out")"

step "promtool: parse the alerts and dashboard queries, run the alert tests"
promtool="$(command -v promtool || true)"
if [[ -z "$promtool" ]]; then
	(
		cd "$work"
		# The package lists may be missing on a new machine.
		apt-get download prometheus >/dev/null 2>&1 || {
			apt-get update >/dev/null
			apt-get download prometheus >/dev/null
		}
		dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool
		rm -f prometheus_*.deb
	)
	promtool="$work/usr/bin/promtool"
fi
"$promtool" --version | head -1
"$promtool" check rules "$work"/rules/*.yaml
cp test/alerts.test.yaml "$work/rules/"
"$promtool" test rules "$work/rules/alerts.test.yaml"

echo "deploy/ checks passed"
