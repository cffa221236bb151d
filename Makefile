# `make run` and `make test` set themselves up: both create .venv and install the
# package (editable) when pyproject.toml changed, so each is one command on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# An editable install leaves the package uncompiled; where PYTHONDONTWRITEBYTECODE is set every agent start
	@# would compile it again (~250 ms of a 0.3 s start).
	$(BIN)/python -m compileall -q agent api dns server
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/proconsul agent -dev

# The DNS tests drive dig (Debian's dnsutils), the web UI's tests headless Chromium (chromium,
# chromium-driver) and the fault tests partition network namespaces with `ip` (iproute2); CI runs as
# root with Debian packages reachable. Without a browser or `ip` those tests skip, loudly.
test: $(STAMP)
	@command -v dig >/dev/null 2>&1 || (apt-get install -y -q dnsutils >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dnsutils >/dev/null))
	@(command -v chromium && command -v chromedriver) >/dev/null 2>&1 || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || echo "!!! could not install chromium and chromium-driver: the web UI's browser tests will be skipped"
	@command -v ip >/dev/null 2>&1 || (apt-get install -y -q iproute2 >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q iproute2 >/dev/null 2>&1)) || echo "!!! could not install iproute2: the fault tests' partitions will be skipped"
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info
