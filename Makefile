# braid — top-level entry points. Every target first runs scripts/setup, which
# installs (with apt) whatever is missing and is a no-op when all is present.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
CTEST_ARGS ?=

# ccache: paths inside the checkout are hashed relative to it and the build
# directory is not hashed, so a fresh clone (CI) reuses what any other checkout
# on this machine compiled; the precompiled header needs the pch sloppiness.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime

.PHONY: all setup configure build test train clean bench

all: build

setup:
	@./scripts/setup

configure: setup
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DBRAID_WERROR=ON -DBRAID_WITH_TORCH=ON >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

train: build
	@./$(BUILD_DIR)/braid launch --nproc 2 -- ./$(BUILD_DIR)/braid train examples/default.toml

clean:
	rm -rf $(BUILD_DIR)
