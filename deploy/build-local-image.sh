#!/usr/bin/env bash
# Builds the cio-relay image without any image registry: the binary is built
# on this machine exactly as the Dockerfile's build stage builds it, and put
# in a FROM scratch image (deploy/Dockerfile.local) with the CA certificates
# of this machine and a nonroot user 65532, like distroless/static:nonroot.
#
#   bash deploy/build-local-image.sh [--smoke] [IMAGE]   (default cio-relay:local)
#
# --smoke then runs the image as Kubernetes would (uid 65532, read-only root
# filesystem, no capabilities) with its embedded NATS server and dry-run
# sink: `version`, then `run` until /readyz answers, one event published
# and its batch printed, and a graceful stop. It uses host networking and
# the ports 4222 (NATS) and 9090 (HTTP) on 127.0.0.1, which must be free.
set -euo pipefail

smoke=false
if [[ "${1:-}" == "--smoke" ]]; then
	smoke=true
	shift
fi
image="${1:-cio-relay:local}"

repo="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
cd "$repo"
if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi

ctx="$(mktemp -d)"
container=""
cleanup() {
	if [[ -n "$container" ]]; then
		docker rm -f "$container" >/dev/null 2>&1 || true
	fi
	rm -rf "$ctx"
}
trap cleanup EXIT

root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o "$root/usr/local/bin/cio-relay" ./cmd/cio-relay
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
docker build -t "$image" -f deploy/Dockerfile.local "$ctx"
docker image inspect "$image" --format 'built {{.RepoTags}}: {{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}} {{.Config.Cmd}}'

if ! $smoke; then
	exit 0
fi

echo "--- version (no network)"
docker run --rm --network none "$image" version

echo "--- run: uid 65532, read-only root, no capabilities, embedded NATS, dry run"
# What the Deployment sets (deploy/base/deployment.yaml), less NATS_URL: the
# embedded server keeps its store on a tmpfs, as the root is read-only.
container="cio-relay-smoke-$$"
docker run -d --name "$container" --network host \
	--read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m \
	--user 65532:65532 --cap-drop ALL --security-opt no-new-privileges \
	-e RELAY_DATA_DIR=/tmp/data -e RELAY_LOG_FORMAT=json \
	-e RELAY_FLUSH_INTERVAL=200ms \
	"$image" run >/dev/null

ready=false
for _ in $(seq 1 100); do
	if [[ "$(docker inspect -f '{{.State.Running}}' "$container")" != true ]]; then
		break
	fi
	if curl -fsS http://127.0.0.1:9090/readyz >/dev/null 2>&1; then
		ready=true
		break
	fi
	sleep 0.1
done
if ! $ready; then
	echo "the container did not become ready; its output:" >&2
	docker logs "$container" >&2
	exit 1
fi
echo "/healthz: $(curl -fsS http://127.0.0.1:9090/healthz)  /readyz: $(curl -fsS http://127.0.0.1:9090/readyz)"
echo "process: $(docker top "$container" -o pid,uid,gid,rss,args | tail -n +2)"

# Publish one track call with the plain NATS protocol: the stream CIO
# captures cio.> and the worker should print its batch within a second.
body='{"userId":"smoke-1","event":"Smoke Tested","properties":{"plan":"pro"}}'
exec 3<>/dev/tcp/127.0.0.1/4222
printf 'CONNECT {"verbose":false,"pedantic":false}\r\nPUB cio.track %d\r\n%s\r\nPING\r\n' "${#body}" "$body" >&3
timeout 5 grep -m1 -q PONG <&3
exec 3>&-

delivered=false
for _ in $(seq 1 50); do
	if docker logs "$container" 2>/dev/null | grep -q '"event":"Smoke Tested"'; then
		delivered=true
		break
	fi
	sleep 0.1
done
if ! $delivered; then
	echo "the dry-run sink printed no batch with the event; output:" >&2
	docker logs "$container" >&2
	exit 1
fi
echo "dry-run batch: $(docker logs "$container" 2>/dev/null | grep -m1 '"event":"Smoke Tested"')"
echo "memory: $(docker stats --no-stream --format '{{.MemUsage}}' "$container")"

echo "--- graceful stop (SIGTERM)"
started=$SECONDS
docker stop -t 30 "$container" >/dev/null
code="$(docker inspect -f '{{.State.ExitCode}}' "$container")"
echo "stopped in $((SECONDS - started))s with exit code $code; last log lines:"
docker logs "$container" 2>&1 | tail -n 3
if [[ "$code" != 0 ]]; then
	echo "cio-relay exited with $code on SIGTERM" >&2
	exit 1
fi
echo "smoke test passed"
