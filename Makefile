# Tasks for cio-relay. `make` or `make help` lists them.
.DEFAULT_GOAL := help
.PHONY: help run test test-inprocess fuzz bench ci vet fmt image deploy-check

help: ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

run: ## run the worker: embedded JetStream, dry-run sink unless CIO_CDP_API_KEY is set
	go run ./cmd/cio-relay

test: ## run every test (NATS in a container when Docker answers, in-process otherwise)
	go test -count=1 -v ./...

test-inprocess: ## run every test against the in-process NATS server
	CIO_RELAY_NATS=inprocess go test -count=1 ./...

fuzz: ## fuzz the parsers and the packer for 30s each
	go test -run '^$$' -fuzz FuzzPrepare -fuzztime 30s ./event
	go test -run '^$$' -fuzz FuzzAppendCompact -fuzztime 30s ./event
	go test -run '^$$' -fuzz FuzzPacker -fuzztime 30s ./batcher
	go test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./trigger
	go test -run '^$$' -fuzz FuzzParseSuppression -fuzztime 30s ./sink
	go test -run '^$$' -fuzz FuzzParseUnsubscribe -fuzztime 30s ./sink
	go test -run '^$$' -fuzz FuzzParseMetric -fuzztime 30s ./sink

bench: ## end-to-end benchmark: bare consumer vs cio-relay, 1M events
	go run ./cmd/cio-relay bench

ci: ## what CI runs: Docker, the NATS image, gofmt, vet, staticcheck, deploy check, tests in containers
	bash .ci/run

vet: ## go vet and staticcheck
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

fmt: ## gofmt every file
	gofmt -w $$(git ls-files '*.go')

image: ## build the container image (needs a registry for the base images)
	docker build -t cio-relay:dev .

deploy-check: ## render and validate the Kubernetes manifests
	bash deploy/check.sh
