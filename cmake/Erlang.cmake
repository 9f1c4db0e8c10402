# Finds OTP's driver header and libei (Debian: erlang-dev), and the ERTS
# version they belong to, which driver_system_info reports.
find_program(ERL_EXECUTABLE erl)
set(_erl_root "/usr/lib/erlang")
if(ERL_EXECUTABLE)
  execute_process(COMMAND ${ERL_EXECUTABLE} -noshell -eval
      "io:format(\"~s;~s;~s\", [code:root_dir(), erlang:system_info(version), erlang:system_info(otp_release)]), halt()."
    OUTPUT_VARIABLE _erl_info RESULT_VARIABLE _erl_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_erl_rc EQUAL 0)
    list(GET _erl_info 0 _erl_root)
    list(GET _erl_info 1 ERTS_VERSION)
    list(GET _erl_info 2 OTP_RELEASE)
  endif()
endif()
find_path(ERL_DRIVER_INCLUDE_DIR erl_driver.h PATHS ${_erl_root}/usr/include NO_DEFAULT_PATH)
find_path(EI_INCLUDE_DIR ei.h PATHS ${_erl_root}/usr/include NO_DEFAULT_PATH)
find_library(EI_LIBRARY NAMES ei PATHS ${_erl_root}/usr/lib NO_DEFAULT_PATH)
if(NOT ERL_DRIVER_INCLUDE_DIR OR NOT EI_LIBRARY)
  message(FATAL_ERROR "erl_driver.h or libei not found: install Debian's erlang-dev")
endif()
if(NOT ERTS_VERSION)
  message(FATAL_ERROR "erl did not run: install Debian's erlang-base")
endif()
message(STATUS "OTP ${OTP_RELEASE} (erts ${ERTS_VERSION}) at ${_erl_root}")
