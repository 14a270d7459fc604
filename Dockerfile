# cio-relay container image.
#
#   docker build -t cio-relay:$(git describe --tags --always) .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/cio-relay:TAG --push .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts
# and cross-compilation. The result is a static binary (CGO_ENABLED=0) on
# distroless/static: CA certificates, tzdata, /etc/passwd with the nonroot
# user 65532, no shell or package manager. It runs as 65532 and needs no
# writable filesystem when NATS_URL is set (Kubernetes: readOnlyRootFilesystem;
# see deploy/).
#
# deploy/build-local-image.sh builds an equivalent image where no image
# registry is reachable (CI here), from a host-built binary.

ARG GO_VERSION=1.26

# The builder runs on the build machine's platform and cross-compiles, which
# is fast and needs no emulation for other architectures.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS TARGETARCH
# -trimpath: no build machine paths in the binary; -s -w: no symbol table or
# DWARF (about a third smaller; stack traces keep function names and lines).
# .git is not in the build context (.dockerignore), so `cio-relay version`
# says "dev" unless the module is built at a tagged version.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags='-s -w' -o /out/cio-relay ./cmd/cio-relay

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cio-relay /usr/local/bin/cio-relay
# Numeric, so Kubernetes can verify runAsNonRoot without a runAsUser.
USER 65532:65532
# /metrics, /healthz, /readyz (RELAY_HTTP_ADDR).
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cio-relay"]
CMD ["run"]
