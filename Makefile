# Entry points; the build itself is CMake's (build/ for the normal build,
# build-asan/ and build-tsan/ for the sanitizer builds).
#
#   make run         build, then run the main job: checksum PATHS (default: this
#                    source tree's src include examples lua) on the async pool
#   make check       build, then run every test
#   make check-asan  the tests under AddressSanitizer + UBSan
#   make check-tsan  the tests under ThreadSanitizer
#   make fuzz        the libFuzzer targets (clang): each corpus once, then each
#                    target for FUZZ_TIME seconds (default 20) under ASan+UBSan
#   make bench       the async pool's benchmark, beside ERTS, libuv and GLib,
#                    then the message path's, beside ERTS, then the Erlang
#                    node's, beside a second BEAM node (bench/README.md)
#   make soak        the soak: jobs, cancels, closes, owner exits and driver
#                    unloads, each job checked (SOAK_ARGS, e.g. '--jobs 100M';
#                    not part of check or CI)
#   make install     install into PREFIX (default /usr/local)

PREFIX ?= /usr/local
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build run check check-asan check-tsan fuzz bench soak install clean

all: build

deps:
	@./scripts/deps

build: deps
	cmake -S . -B build -DEDRV_WERROR=ON -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)
	cmake --build build -j$(JOBS)

PATHS ?= src include examples lua

run: build
	./build/lua/edrv examples/sha256sum.lua -v --drivers build/drivers $(PATHS)

check: build
	cd build && ctest --output-on-failure -j$(JOBS)

check-asan: deps
	cmake -S . -B build-asan -DEDRV_SANITIZE=address -DCMAKE_BUILD_TYPE=Debug -DEDRV_WERROR=ON
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure -j$(JOBS)

check-tsan: deps
	cmake -S . -B build-tsan -DEDRV_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug -DEDRV_WERROR=ON
	cmake --build build-tsan -j$(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ctest --output-on-failure -j$(JOBS)

# -O1: the sanitizers' and the fuzzer's usual trade of speed for precise
# reports; Debug keeps the assertions on.
FUZZ_TIME ?= 20
fuzz: deps
	@dpkg-query -W -f='$${Status}\n' clang libclang-rt-14-dev 2>/dev/null | grep -c "ok installed" | grep -qx 2 || \
	  { echo "make fuzz needs Debian's clang and libclang-rt-14-dev:" \
	         "apt-get install clang libclang-rt-14-dev" >&2; exit 1; }
	CC=clang cmake -S . -B build-fuzz -DEDRV_FUZZ=ON -DEDRV_SANITIZE=address -DEDRV_TESTS=OFF \
	  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-g -O1" -DEDRV_WERROR=ON
	cmake --build build-fuzz -j$(JOBS) --target fuzz
	cd build-fuzz && ctest --output-on-failure -j$(JOBS)
	./tests/fuzz/run.sh build-fuzz $(FUZZ_TIME)

bench: deps
	EDRV_DEPS_BENCH=1 ./scripts/deps
	cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DEDRV_BENCH=ON -DEDRV_TESTS=OFF
	cmake --build build-bench -j$(JOBS)
	./bench/run build-bench
	./bench/run_msg build-bench
	./bench/run_node build-bench

SOAK_ARGS ?=

soak: deps
	cmake -S . -B build-soak -DCMAKE_BUILD_TYPE=Release -DEDRV_BENCH=ON -DEDRV_BENCH_PEERS=OFF \
	  -DEDRV_TESTS=OFF -DEDRV_WERROR=ON
	cmake --build build-soak -j$(JOBS) --target soak
	./build-soak/bench/soak $(SOAK_ARGS)

install: build
	cmake --install build

clean:
	rm -rf build build-asan build-tsan build-fuzz build-bench build-soak
