# A NATS server image built without any registry: the build context holds a
# statically linked nats-server (CGO_ENABLED=0) built by .ci/run from the
# version pinned in go.mod, so the tests run the server the code is built
# against. FROM scratch has no shell, so the binary is the entrypoint and the
# arguments come from the container's command (see internal/natstest).
FROM scratch
COPY nats-server /nats-server
ENTRYPOINT ["/nats-server"]
