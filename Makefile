# Shortcuts; each target runs one documented command.
#   make pyz         dist/cmux-gevent.pyz, the daemon as one file (python -m cmux_gevent.build)
#   make shim        preload/libworkspace_net.so for a source checkout (make -C preload)
#   make e2e         e2e/e2e.sh against the installed cmux-gevent
#   make docker-e2e  e2e/e2e.sh inside the Docker image (skips without a Docker engine)
#   make lint        ruff and shellcheck, as tox -e lint does

PYTHON ?= python3

.PHONY: pyz shim e2e docker-e2e lint clean

pyz:
	$(PYTHON) -m cmux_gevent.build

shim:
	$(MAKE) -C preload

e2e:
	bash e2e/e2e.sh

docker-e2e:
	bash e2e/docker.sh

lint:
	ruff check .
	ruff format --check .
	shellcheck e2e/e2e.sh e2e/docker.sh .ci/run

clean:
	$(MAKE) -C preload clean
	rm -rf build dist *.egg-info
