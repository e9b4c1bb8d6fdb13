# strata — one Makefile. Objects under build/ (build/san/ with SAN=1).
#   make demo     set up, build, run the demo
#   make test     set up, build, run every test (SAN=1: under ASan + UBSan)
#   make bench    benchmarks, printing figures
#   make          build/strata

.DEFAULT_GOAL := all
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -Wall -Wextra -std=c11 -D_GNU_SOURCE -I. -MMD -MP -fopenmp -fno-math-errno
LDFLAGS += -fopenmp
# OpenBLAS's OpenMP build (libopenblas0-openmp), named by path so that the
# system's choice of BLAS (update-alternatives) does not change it: the BLAS
# and strata's own kernels then share one OpenMP thread pool per rank, and
# neither spins while the other works.
OPENBLAS_DIR ?= /usr/lib/$(shell $(CC) -print-multiarch)/openblas-openmp
LDLIBS  := -lcjson -lsqlite3 -lmicrohttpd -lprotobuf-c -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas -lm -lpthread

ifeq ($(SAN),1)
  BUILD   := build/san
  CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else
  BUILD   := build
endif

# --- optional features, detected and reported -------------------------------
CUDA_HOME ?= /usr/local/cuda
HAVE_CUDA := $(shell test -x $(CUDA_HOME)/bin/nvcc && echo 1 || echo 0)
# NCCL counts only with CUDA: its backend needs the runtime too
HAVE_NCCL := $(shell test $(HAVE_CUDA) = 1 && test -f $(CUDA_HOME)/include/nccl.h && \
               ls $(CUDA_HOME)/lib64/libnccl.so* >/dev/null 2>&1 && echo 1 || echo 0)
HAVE_MPI  := $(shell command -v mpicc >/dev/null 2>&1 && echo 1 || echo 0)
FEATURES  := HAVE_CUDA=$(HAVE_CUDA) HAVE_NCCL=$(HAVE_NCCL) HAVE_MPI=$(HAVE_MPI)
ifeq ($(HAVE_MPI),1)
  CFLAGS  += -DHAVE_MPI $(shell mpicc --showme:compile)
  LDLIBS  += $(shell mpicc --showme:link)
endif
# rpath: the CUDA libraries are found at run time without LD_LIBRARY_PATH
ifeq ($(HAVE_CUDA),1)
  CFLAGS  += -DHAVE_CUDA -I$(CUDA_HOME)/include
  CUDA_LIBS := -lcublas -lcudart -lstdc++
  ifeq ($(HAVE_NCCL),1)
    CFLAGS  += -DHAVE_NCCL
    CUDA_LIBS := -lnccl $(CUDA_LIBS)
  endif
  # only the CUDA backend's library and the GPU tests link these (see GPU_LIB)
  CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 $(CUDA_LIBS) -Wl,-rpath,$(CUDA_HOME)/lib64
endif

# CUDA kernels (executor/cuda/*.cu): nvcc, for Ampere (sm_80) and Hopper
# (sm_90) machine code plus PTX that newer GPUs compile at load time.
NVCC      := $(CUDA_HOME)/bin/nvcc
NVCC_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]
NVFLAGS   := -O2 -g -std=c++17 -I. $(NVCC_ARCH) -Xcompiler -Wall,-fPIC -MMD -MP

# --- sources ----------------------------------------------------------------
# The CUDA backend (executor/gpu.h) is a library of its own, loaded by strata
# only when a GPU is asked for; its C files stay out of libstrata.a.
GPU_SRC  := executor/device_cuda.c executor/comm_nccl.c
LIB_SRC  := $(filter-out $(GPU_SRC),$(wildcard ir/*.c db/*.c executor/*.c profiler/*.c \
              costmodel/*.c search/*.c jobs/*.c api/*.c))
CU_SRC   := $(if $(filter 1,$(HAVE_CUDA)),$(wildcard executor/cuda/*.cu))
CLI_SRC  := $(wildcard cli/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
# tests/mpi_*.c: built like the others, run under mpirun by scripts/run-tests.sh
MPI_TEST_SRC := $(wildcard tests/mpi_*.c)
# tests/support/*.c: helpers linked into every test program, never run alone
SUPPORT_SRC := $(wildcard tests/support/*.c)
BENCH_SRC:= $(wildcard bench/bench_*.c)
MPI_BENCH_SRC := $(if $(filter 1,$(HAVE_MPI)),$(wildcard bench/mpi_*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/onnx.pb-c.o
GPU_C_OBJ:= $(GPU_SRC:%.c=$(BUILD)/%.o)
GPU_OBJ  := $(GPU_C_OBJ) $(CU_SRC:%.cu=$(BUILD)/%.o)

# The ONNX protobuf schema, compiled by protobuf-c at build time (ir/onnx.c
# reads models with it). The schema comes from Debian's python3-onnx (ONNX
# 1.12, Expat licence; scripts/setup.sh installs it).
ONNX_PROTO ?= /usr/lib/python3/dist-packages/onnx/onnx.proto
GEN := build/gen
CFLAGS += -I$(GEN)
$(GEN)/onnx.pb-c.c $(GEN)/onnx.pb-c.h: $(ONNX_PROTO)
	@mkdir -p $(GEN)
	protoc-c --proto_path=$(dir $(ONNX_PROTO)) --c_out=$(GEN) $(ONNX_PROTO)
$(BUILD)/gen/onnx.pb-c.o: $(GEN)/onnx.pb-c.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -w -c $< -o $@
$(BUILD)/ir/onnx.o build/fuzz/obj/ir/onnx.o: $(GEN)/onnx.pb-c.h

# The identity of the kernels (executor/build.h): a hash of the sources that
# decide an op's time, and of the flags and BLAS they are built with. A
# profile records it; estimates warn when it changed since.
KERNEL_SRC := $(sort $(wildcard executor/k_*.c executor/kernels*.[ch] executor/device*.[ch] \
                executor/blas.[ch] executor/cuda/*.cu executor/cuda/*.h executor/cuda/*.cuh))
KERNELS_ID := $(shell (cat $(KERNEL_SRC); echo '$(CFLAGS) $(NVFLAGS) $(OPENBLAS_DIR)') | \
                sha256sum | cut -c1-12)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
SUPPORT_OBJ := $(SUPPORT_SRC:%.c=$(BUILD)/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
MPI_TESTS:= $(MPI_TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# without mpicc they are not built, and run-tests.sh says they are skipped
ifeq ($(HAVE_MPI),1)
  MPI_BUILD := $(MPI_TESTS)
endif
BENCHES  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
MPI_BENCHES := $(MPI_BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
LIB      := $(BUILD)/libstrata.a
STRATA   := $(BUILD)/strata
ifeq ($(HAVE_CUDA),1)
  GPU_LIB := $(BUILD)/libstrata-cuda.so
endif
# the tests of the CUDA kernels and of NCCL link the backend itself
GPU_TESTS := $(filter $(BUILD)/tests/test_cuk_% $(BUILD)/tests/test_comm_nccl,$(TEST_SRC:tests/%.c=$(BUILD)/tests/%))

.PHONY: all setup demo test check bench clean features fuzz
all: features $(STRATA) $(GPU_LIB)

features:
	@echo "strata build: $(FEATURES) SAN=$(or $(SAN),0)"

setup:
	@sh scripts/setup.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/executor/build.o: CFLAGS += -DSTRATA_KERNELS_ID='"$(KERNELS_ID)"'
$(BUILD)/executor/build.o: $(KERNEL_SRC) Makefile

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# -rdynamic: the CUDA backend, loaded later, calls back into strata's code
$(STRATA): $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -rdynamic -o $@ $(CLI_OBJ) $(LIB) $(LDLIBS)

$(GPU_C_OBJ): CFLAGS += -fPIC
$(GPU_LIB): $(GPU_OBJ)
	$(CC) $(LDFLAGS) -shared -o $@ $(GPU_OBJ) $(CUDA_LDLIBS)

# a static pattern: only the test programs, never build/tests/support/*.o
$(GPU_TESTS): $(GPU_OBJ)
$(GPU_TESTS): TEST_EXTRA = $(GPU_OBJ) $(CUDA_LDLIBS)
$(TESTS) $(MPI_TESTS): $(BUILD)/tests/%: $(BUILD)/tests/%.o $(SUPPORT_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $< $(SUPPORT_OBJ) $(TEST_EXTRA) $(LIB) $(LDLIBS) -lcmocka

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# The tests find the binary and the data through these.
export STRATA_BIN := $(abspath $(STRATA))
export STRATA_ROOT := $(abspath .)

# the REST API against its OpenAPI description, and its page in Chromium
SCRIPT_TESTS := scripts/test-openapi.sh scripts/test-page.sh
# each fuzz harness replaying the inputs kept in fuzz/regress and fuzz/seeds
REPLAY_TESTS := $(patsubst fuzz/fuzz_%.c,$(BUILD)/tests/replay_%,$(wildcard fuzz/fuzz_*.c))

$(REPLAY_TESTS): $(BUILD)/tests/replay_%: $(BUILD)/fuzz/fuzz_%.o $(BUILD)/fuzz/replay_main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test:
	@sh scripts/setup.sh test
	@$(MAKE) --no-print-directory all $(TESTS) $(MPI_BUILD) $(REPLAY_TESTS)
	@sh scripts/run-tests.sh $(TESTS) $(REPLAY_TESTS) $(MPI_TESTS) $(SCRIPT_TESTS)

# libFuzzer harnesses (fuzz/), built with clang: the model, cluster and
# strategy JSON readers and the REST API's router and body readers. `make fuzz`
# runs each for FUZZ_SECONDS; a crash is kept in build/fuzz/ and fails it.
FUZZ_CC      ?= clang
FUZZ_CFLAGS  := -g -O1 -std=c11 -D_GNU_SOURCE -I. -MMD -MP -fsanitize=address,undefined \
                -fno-sanitize-recover=undefined
FUZZ_SECONDS ?= 60
FUZZERS      := model cluster strategy router onnx
FUZZ_LIB_SRC := $(wildcard ir/*.c db/*.c costmodel/*.c search/*.c jobs/*.c api/*.c) executor/build.c \
                executor/k_paths.c
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=build/fuzz/obj/%.o) build/fuzz/obj/gen/onnx.pb-c.o
FUZZ_BINS    := $(FUZZERS:%=build/fuzz/fuzz_%)
# kept between runs (pattern-rule objects are otherwise deleted as intermediates)
.SECONDARY: $(FUZZ_LIB_OBJ)

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(GEN) -fsanitize=fuzzer-no-link -c $< -o $@

build/fuzz/obj/gen/onnx.pb-c.o: $(GEN)/onnx.pb-c.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(GEN) -w -fsanitize=fuzzer-no-link -c $< -o $@

build/fuzz/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_LIB_OBJ) -o $@ \
	    -lcjson -lsqlite3 -lmicrohttpd -lprotobuf-c -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas -lm -lpthread

fuzz:
	@sh scripts/setup.sh fuzz
	@$(MAKE) --no-print-directory $(FUZZ_BINS)
	@sh scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZERS)

demo:
	@sh scripts/setup.sh demo
	@$(MAKE) --no-print-directory all
	@sh scripts/demo.sh $(STRATA)

bench:
	@sh scripts/setup.sh bench
	@$(MAKE) --no-print-directory all $(BENCHES) $(MPI_BENCHES)
	@for b in $(BENCHES); do $$b || exit 1; done
	@for b in $(MPI_BENCHES); do \
	    mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 $$b || exit 1; done
	@sh scripts/bench-costmodel.sh $(STRATA)

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
