# Drivers.cmake: edrv_add_driver. Drivers are built the way a user builds one
# for OTP: a plain shared object against erl_driver.h, with no edrv header and
# no edrv library, into drivers/.
# In a sanitizer build they are instrumented like the rest, so that ASan, UBSan
# and TSan see the drivers' own bugs (their runtime is the host program's: a
# driver loads only into a sanitized program). erl has no sanitizer runtime,
# so the tests that load drivers into erl find a plain copy of each in
# EDRV_ERL_DRIVERS (drivers-plain/; in other builds drivers/ itself), built
# from the same sources with the same definitions and libraries.
if(EDRV_SAN_FLAGS)
  set(EDRV_ERL_DRIVERS ${CMAKE_BINARY_DIR}/drivers-plain)
else()
  set(EDRV_ERL_DRIVERS ${CMAKE_BINARY_DIR}/drivers)
endif()

function(edrv_driver_target name src dir flags)
  add_library(${name} MODULE ${src})
  set_target_properties(${name} PROPERTIES PREFIX "" SUFFIX ".so" LIBRARY_OUTPUT_DIRECTORY ${dir})
  target_include_directories(${name} PRIVATE ${ERL_DRIVER_INCLUDE_DIR})
  # Replaces the directory-wide sanitizer options with these.
  set_target_properties(${name} PROPERTIES COMPILE_OPTIONS "${EDRV_WARNINGS};${flags}"
    LINK_OPTIONS "${flags}")
endfunction()

function(edrv_add_driver name src)
  edrv_driver_target(${name} ${src} ${CMAKE_BINARY_DIR}/drivers "${EDRV_SAN_FLAGS}")
  if(EDRV_SAN_FLAGS)
    # The plain copy follows what the caller sets on ${name} later.
    edrv_driver_target(${name}_plain ${src} ${EDRV_ERL_DRIVERS} "")
    set_target_properties(${name}_plain PROPERTIES OUTPUT_NAME ${name})
    target_compile_definitions(${name}_plain PRIVATE $<TARGET_PROPERTY:${name},COMPILE_DEFINITIONS>)
    target_include_directories(${name}_plain PRIVATE $<TARGET_PROPERTY:${name},INCLUDE_DIRECTORIES>)
    target_link_libraries(${name}_plain PRIVATE $<TARGET_PROPERTY:${name},LINK_LIBRARIES>)
    add_dependencies(${name} ${name}_plain)
  endif()
endfunction()
