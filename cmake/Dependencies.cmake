# Every third-party dependency, found once. All come from Debian's packages
# (scripts/setup-deps.sh installs them); see docs/architecture.md for why each is used.

find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
# Debian's protobuf has no CMake config: the FindProtobuf module. gRPC's config finds its own deps.
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)  # no version file: never ask for a version
find_package(nlohmann_json CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG REQUIRED)
include(GoogleTest)

set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES x86_64-linux-gnu/openblas-pthread openblas REQUIRED)
add_library(switchyard_openblas INTERFACE)
target_include_directories(switchyard_openblas INTERFACE ${CBLAS_INCLUDE_DIR})
target_link_libraries(switchyard_openblas INTERFACE BLAS::BLAS)

find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
find_library(XXHASH_LIBRARY xxhash REQUIRED)
add_library(switchyard_xxhash INTERFACE)
target_include_directories(switchyard_xxhash INTERFACE ${XXHASH_INCLUDE_DIR})
target_link_libraries(switchyard_xxhash INTERFACE ${XXHASH_LIBRARY})

find_program(SWITCHYARD_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT SWITCHYARD_PYTHON3)
  message(FATAL_ERROR "Debian's /usr/bin/python3 (with python3-numpy) is needed for the golden tests")
endif()

if(SWITCHYARD_WITH_CUDA)
  # The default static runtime would link libcudart twice into targets that also use CUDA::cudart.
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # No GPU to detect on build machines; Ampere and Hopper (H100/H200).
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  # CMake 3.25 does not know nvcc's C++20 flag; define it after enable_language (see toolchain notes).
  if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "switchyard: CUDA ${CUDAToolkit_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES}")
endif()

if(SWITCHYARD_WITH_NCCL)
  if(NOT SWITCHYARD_WITH_CUDA)
    message(FATAL_ERROR "SWITCHYARD_WITH_NCCL needs SWITCHYARD_WITH_CUDA")
  endif()
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} REQUIRED)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} REQUIRED)
  add_library(NCCL::nccl UNKNOWN IMPORTED)
  set_target_properties(NCCL::nccl PROPERTIES IMPORTED_LOCATION ${NCCL_LIBRARY}
                        INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
endif()

if(SWITCHYARD_WITH_GLOO)
  find_package(Gloo CONFIG REQUIRED)
endif()

# Unicode normalization (NFC and friends) for tokenizer.json normalizers: libutf8proc, or ICU
# where libutf8proc is not installed. Without either, such normalizers fail with UNIMPLEMENTED.
add_library(switchyard_unicode INTERFACE)
pkg_check_modules(UTF8PROC QUIET IMPORTED_TARGET libutf8proc)
if(UTF8PROC_FOUND)
  target_link_libraries(switchyard_unicode INTERFACE PkgConfig::UTF8PROC)
  target_compile_definitions(switchyard_unicode INTERFACE SWITCHYARD_HAVE_UTF8PROC=1)
else()
  pkg_check_modules(ICU_UC QUIET IMPORTED_TARGET icu-uc)
  if(ICU_UC_FOUND)
    target_link_libraries(switchyard_unicode INTERFACE PkgConfig::ICU_UC)
    target_compile_definitions(switchyard_unicode INTERFACE SWITCHYARD_HAVE_ICU=1)
  else()
    message(WARNING "neither libutf8proc nor ICU found: tokenizer NFC normalizers unavailable")
  endif()
endif()
