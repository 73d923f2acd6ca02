# Target helpers in the manner of abseil's absl_cc_library / absl_cc_test.
#
#   switchyard_cc_library(NAME engine SRCS a.cc HDRS a.h DEPS switchyard::common)
#     -> static library sy_engine, alias switchyard::engine
#   switchyard_cc_binary(NAME switchyard-run SRCS main.cc DEPS switchyard::engine)
#     -> build/bin/switchyard-run
#   switchyard_cc_test(NAME engine_test SRCS engine_test.cc DEPS switchyard::engine LABELS unit)
#     (one label per test target: gtest_discover_tests would split a list into separate properties)
#     -> a GoogleTest binary whose cases ctest discovers at test time

function(switchyard_cc_library)
  cmake_parse_arguments(SY "" "NAME" "SRCS;HDRS;DEPS;DEFINES" ${ARGN})
  set(target sy_${SY_NAME})
  if(SY_SRCS)
    add_library(${target} STATIC ${SY_SRCS} ${SY_HDRS})
    target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/gen)
    target_link_libraries(${target} PUBLIC ${SY_DEPS})
    target_compile_definitions(${target} PUBLIC ${SY_DEFINES})
  else()
    add_library(${target} INTERFACE ${SY_HDRS})
    target_include_directories(${target} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/gen)
    target_link_libraries(${target} INTERFACE ${SY_DEPS})
    target_compile_definitions(${target} INTERFACE ${SY_DEFINES})
  endif()
  add_library(switchyard::${SY_NAME} ALIAS ${target})
endfunction()

function(switchyard_cc_binary)
  cmake_parse_arguments(SY "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${SY_NAME} ${SY_SRCS})
  target_include_directories(${SY_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/gen)
  target_link_libraries(${SY_NAME} PRIVATE ${SY_DEPS})
endfunction()

function(switchyard_cc_test)
  cmake_parse_arguments(SY "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT SY_LABELS)
    set(SY_LABELS unit)
  endif()
  if(NOT SY_TIMEOUT)
    set(SY_TIMEOUT 300)
  endif()
  add_executable(${SY_NAME} ${SY_SRCS})
  set_target_properties(${SY_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  target_include_directories(${SY_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/gen)
  target_link_libraries(${SY_NAME} PRIVATE ${SY_DEPS} GTest::gmock GTest::gtest_main)
  # Two single-valued properties: gtest_discover_tests would split a ";"-separated ENVIRONMENT.
  gtest_discover_tests(${SY_NAME}
    DISCOVERY_MODE PRE_TEST
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${SY_LABELS}" TIMEOUT ${SY_TIMEOUT}
               ENVIRONMENT "SWITCHYARD_BIN_DIR=${CMAKE_BINARY_DIR}/bin"
               ENVIRONMENT_MODIFICATION "SWITCHYARD_SOURCE_DIR=set:${PROJECT_SOURCE_DIR}")
endfunction()
