# PBN: pre-boot network authentication. See README.md.
GO       ?= go
OUT      ?= out
# Every test, the real components included. Packages run two at a time: the
# machine has two cores and many tests start servers or QEMU guests.
TESTFLAGS ?= -count=1 -p 2 -timeout 75m
FUZZTIME ?= 60s

.PHONY: all deps build test vet bench demo fuzz clean image

all: build

deps:
	.ci/deps

build:
	$(GO) build ./...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: the files above need formatting' >&2; exit 1; }
	$(GO) vet ./...

test: deps vet
	$(GO) test $(TESTFLAGS) ./...

bench: deps
	@mkdir -p $(OUT)
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 1 -p 1 ./... | tee $(OUT)/bench.txt
	$(GO) run ./internal/benchjson < $(OUT)/bench.txt > $(OUT)/bench.json
	@$(GO) run ./internal/benchjson -table < $(OUT)/bench.txt

# The pre-boot image for the installed kernel, with its size report.
image: deps
	@mkdir -p $(OUT)
	$(GO) run ./cmds/pbnctl image build -o $(OUT)/pbn.img -report $(OUT)/pbn.img.txt

demo: deps
	$(GO) run ./qemu/demo

# Runs each fuzz target for FUZZTIME; new interesting inputs land in the
# packages' testdata/fuzz corpora, which are committed.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf $(OUT)
